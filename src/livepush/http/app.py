"""The aiohttp application: every route of a node, wired in one place."""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Literal

import msgspec
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from livepush.auth.policy import ClaimsPolicy, HttpCallbackPolicy
from livepush.auth.tokens import TokenVerifier
from livepush.collab.crdt.endpoint import add_crdt_routes
from livepush.collab.locks import check_lock, describe_lock
from livepush.collab.rooms import CollabSettings
from livepush.collab.save import check_fencing, resolve_save
from livepush.config import Config
from livepush.core.node import Node, NodeSettings
from livepush.core.session import SessionLimits
from livepush.engines.base import Engine
from livepush.engines.memory import memory_engine
from livepush.engines.redis import redis_engine
from livepush.execution.relay import ExecutionSettings
from livepush.http.errors import json_error, json_response
from livepush.http.executions import add_execution_routes
from livepush.http.openapi import openapi_document
from livepush.http.publish import PublishHandler, check_api_key
from livepush.protocol.channels import parse_channel
from livepush.protocol.errors import ErrorCode, ProtocolError
from livepush.transports.handshake import (
    HandshakeSettings,
    authenticate,
    check_request_origin,
    error_response,
    query_params,
)
from livepush.transports.websocket import close_all, push_endpoint

log = logging.getLogger(__name__)

NODE_KEY = web.AppKey("livepush.node", Node)
MAX_COMMANDS_PER_POST = 100

Handler = Callable[[web.Request], Awaitable[web.Response]]


def build_engine(config: Config) -> Engine:
    """The configured engine."""
    if config.engine == "redis":
        return redis_engine(
            config.redis_url,
            history_size=config.history_size,
            history_ttl=config.history_ttl,
            prefix=config.redis_prefix,
            cluster=config.redis_cluster,
        )
    return memory_engine(
        history_size=config.history_size,
        history_ttl=config.history_ttl,
        stream_ttl=max(3600.0, config.execution_retention),
        output_bytes=config.output_store_bytes,
    )


def execution_settings(config: Config) -> ExecutionSettings:
    """The execution path's settings."""
    return ExecutionSettings(
        retention=config.execution_retention,
        inline_bytes=config.output_inline_bytes,
        push_limit=config.output_push_limit,
        max_bytes=config.output_max_bytes,
        # a chunk always fits a connection's queue
        chunk_bytes=max(1024, min(config.output_chunk_bytes, config.max_queue_bytes // 2)),
        snapshot_inline_bytes=config.snapshot_inline_bytes,
        max_event_bytes=config.max_publish_bytes,
    )


def build_node(config: Config) -> Node:
    """A node from the configuration (engine, token verifier, policy, limits)."""
    verifier = TokenVerifier(
        secret=config.jwt_secret,
        public_key_path=config.jwt_public_key,
        jwks_path=config.jwt_jwks,
        audience=config.jwt_audience,
        issuer=config.jwt_issuer,
        leeway=config.jwt_leeway,
        user_claim=config.jwt_user_claim,
    )
    policy = (
        HttpCallbackPolicy(
            config.auth_callback_url,
            cache_ttl=config.auth_callback_cache_ttl,
            timeout=config.auth_callback_timeout,
            api_key=config.api_key,
        )
        if config.auth_callback_url
        else ClaimsPolicy()
    )
    return Node(
        build_engine(config),
        verifier,
        policy=policy,
        settings=NodeSettings(
            recovery_limit=config.recovery_limit,
            push_ref_ttl=config.push_ref_ttl,
            max_connections_per_user=config.max_connections_per_user,
            max_publish_bytes=config.max_publish_bytes,
            token_expiry_warning=config.token_expiry_warning,
            ping_interval=config.ping_interval,
            presence=config.presence,
            presence_ttl=config.presence_ttl,
            flush_passes=config.flush_passes or (2 if config.engine == "redis" else 1),
            execution=execution_settings(config),
            lock_idle_ttl=config.lock_idle_ttl,
            collab=CollabSettings.for_presence_ttl(
                config.presence_ttl,
                flush_interval=config.collab_flush_interval,
                tick=config.collab_tick,
            ),
        ),
        limits=SessionLimits(
            max_queue_messages=config.max_queue_messages,
            max_queue_bytes=config.max_queue_bytes,
            max_subscriptions=config.max_subscriptions,
            rate=config.rate_limit,
            burst=config.rate_burst,
            ephemeral_rate=config.ephemeral_rate,
            ephemeral_burst=config.ephemeral_burst,
        ),
    )


def create_app(config: Config, node: Node | None = None) -> web.Application:
    """The application serving the push endpoint, the publish API, health and metrics."""
    node = node or build_node(config)
    # (the execution events endpoint takes node outputs up to output_max_bytes; the publish
    # endpoint checks its own, smaller limit)
    app = web.Application(client_max_size=max(config.max_publish_bytes, config.output_max_bytes))
    app[NODE_KEY] = node
    handshake_settings = HandshakeSettings(
        tuple(config.allowed_origins), config.trust_proxy, config.auth_cookie
    )
    openapi = msgspec.json.encode(openapi_document(config.rest_prefix))

    async def push_commands(request: web.Request) -> web.Response:
        """Commands of an SSE connection (same semantics as over WebSocket). The connection
        may be on another node of the cluster: the commands are then run there."""
        try:
            check_request_origin(request, handshake_settings)
            query = query_params(request)
            identity = authenticate(request, node, handshake_settings, query)
            push_ref = query.get("pushRef", "")
        except ProtocolError as exc:
            return error_response(exc)
        body = await request.read()
        if len(body) > config.max_message_bytes * MAX_COMMANDS_PER_POST:
            return json_error(413, ErrorCode.MESSAGE_TOO_LARGE, "too many or too large commands")
        try:
            raw_items = _split_commands(body)
        except ProtocolError as exc:
            return json_error(400, exc.code, exc.message)
        try:
            replies = await node.run_commands(push_ref, identity.user_id, raw_items)
        except ProtocolError as exc:
            return error_response(exc)
        return web.Response(body=b"[" + b",".join(replies) + b"]", content_type="application/json")

    api_key = config.api_key.encode() if config.api_key else None

    def with_api_key(handler: Handler) -> Handler:
        """An endpoint for the host application: the API key first, and a `ProtocolError`
        raised by the handler answered with its code."""

        async def checked(request: web.Request) -> web.Response:
            refused = check_api_key(request, api_key)
            if refused is not None:
                return refused
            try:
                return await handler(request)
            except ProtocolError as exc:
                return error_response(exc)

        return checked

    @with_api_key
    async def presence(request: web.Request) -> web.Response:
        """Who is in a channel, across the cluster."""
        return json_response(await node.members(request.query.get("channel", "")))

    @with_api_key
    async def collaborators(request: web.Request) -> web.Response:
        """A workflow's collaborators, cluster-wide: as `collaboratorsChanged`."""
        workflow_id = request.match_info["workflowId"]
        parse_channel(f"workflow:{workflow_id}")
        return json_response(await node.collab.members(workflow_id))

    @with_api_key
    async def lock_check(request: web.Request) -> web.Response:
        """Whether a fencing token is a lock's current one: for save endpoints."""
        try:
            body = msgspec.json.decode(await request.read(), type=LockCheck)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            return json_error(400, ErrorCode.BAD_REQUEST, f"expected {{lock, token}}: {exc}")
        valid = await check_lock(node, body.lock, body.token)
        current = await describe_lock(node, body.lock)
        return json_response({"lock": body.lock, "valid": valid, "current": current})

    @with_api_key
    async def save_resolve(request: web.Request) -> web.Response:
        """What a host application's save endpoint stores: versions compared,
        last-write-wins per property; 409 with `version_conflict` / `lock_lost`."""
        try:
            body = msgspec.json.decode(await request.read(), type=SaveResolve)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            return json_error(400, ErrorCode.BAD_REQUEST, f"invalid save request: {exc}")
        if (body.lock is None) != (body.token is None):
            return json_error(400, ErrorCode.BAD_REQUEST, "send `lock` and `token` together")
        result = None
        if body.lock is not None and body.token is not None:
            result = await check_fencing(node, body.lock, body.token)
        if result is None:
            result = resolve_save(
                stored=body.stored,
                stored_version=body.storedVersion,
                incoming=body.incoming,
                base_version=body.baseVersion,
                base=body.base,
                policy=body.policy,
            )
        return json_response(result.describe(), status=409 if result.status == "conflict" else 200)

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

    prefix = config.rest_prefix
    app.router.add_get(
        f"{prefix}/push",
        push_endpoint(
            node,
            handshake_settings,
            max_message_bytes=config.max_message_bytes,
            sse_retry_ms=config.sse_retry_ms,
        ),
    )
    app.router.add_post(f"{prefix}/push", push_commands)
    app.router.add_post(
        "/api/v1/publish", PublishHandler(node, config.api_key, config.max_publish_bytes).handle
    )
    app.router.add_get("/api/v1/presence", presence)
    app.router.add_get("/api/v1/workflows/{workflowId}/collaborators", collaborators)
    app.router.add_post("/api/v1/locks/check", lock_check)
    app.router.add_post("/api/v1/saves/resolve", save_resolve)
    add_execution_routes(app, node, config, handshake_settings)
    add_crdt_routes(app, node, config, handshake_settings)
    app.router.add_get("/api/v1/openapi.json", openapi_json)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        await node.start()
        yield
        await close_all(node)
        await node.close()

    app.cleanup_ctx.append(lifecycle)
    return app


class SaveResolve(msgspec.Struct):
    """`POST /api/v1/saves/resolve` (see `livepush.collab.save`)."""

    stored: dict[str, Any]
    storedVersion: str
    incoming: dict[str, Any]
    baseVersion: str
    base: dict[str, Any] | None = None
    policy: Literal["last_write_wins", "reject"] = "last_write_wins"
    lock: str | None = None
    token: int | None = None


class LockCheck(msgspec.Struct):
    """`POST /api/v1/locks/check`."""

    lock: str
    token: int


def _split_commands(body: bytes) -> list[bytes]:
    """A POST body holds one command object or an array of them; each is decoded alone so
    one bad command gets its own error and the others still run."""
    try:
        parsed = msgspec.json.decode(body)
    except msgspec.DecodeError as exc:
        raise ProtocolError(ErrorCode.INVALID_JSON, f"body is not valid JSON: {exc}") from exc
    items = parsed if isinstance(parsed, list) else [parsed]
    if len(items) > MAX_COMMANDS_PER_POST:
        raise ProtocolError(
            ErrorCode.BAD_REQUEST, f"at most {MAX_COMMANDS_PER_POST} commands per request"
        )
    return [msgspec.json.encode(item) for item in items]
