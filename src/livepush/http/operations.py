"""What operators and host applications ask a node about itself: `/healthz` (the process is
up), `/readyz` (it should get new connections), `/metrics` (Prometheus), `GET
/api/v1/presence` (who is in a channel, cluster-wide; API key) and `GET /api/v1/openapi.json`.
"""

from __future__ import annotations

import os

import msgspec
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from livepush.core.node import Node
from livepush.http.api import api_key_bytes, with_api_key
from livepush.http.openapi import openapi_document
from livepush.responses import json_response


def add_operation_routes(
    app: web.Application, node: Node, api_key: str | None, rest_prefix: str
) -> None:
    """Register a node's health, readiness, metrics, presence and OpenAPI endpoints."""
    openapi = msgspec.json.encode(openapi_document(rest_prefix))

    @with_api_key(api_key_bytes(api_key))
    async def presence(request: web.Request) -> web.Response:
        return json_response(await node.subscriptions.members(request.query.get("channel", "")))

    async def healthz(request: web.Request) -> web.Response:
        # the process id tells which worker answered (`--workers`)
        return json_response({"status": "ok", "pid": os.getpid()})

    async def readyz(request: web.Request) -> web.Response:
        if node.ready:
            return json_response({"status": "ready"})
        reason = "draining" if node.draining else "engine unavailable"
        return json_response({"status": "not ready", "reason": reason}, status=503)

    async def metrics(request: web.Request) -> web.Response:
        response = web.Response(body=node.metrics.render())
        response.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return response

    async def openapi_json(request: web.Request) -> web.Response:
        return web.Response(body=openapi, content_type="application/json")

    app.router.add_get("/api/v1/presence", presence)
    app.router.add_get("/api/v1/openapi.json", openapi_json)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
