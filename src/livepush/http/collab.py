"""The collaboration endpoints of the host application's API (API key):

- `GET /api/v1/workflows/<id>/collaborators`: a workflow's collaborators, cluster-wide, as
  `collaboratorsChanged` has them;
- `POST /api/v1/locks/check`: whether a fencing token is a lock's current one (save handlers);
- `POST /api/v1/saves/resolve`: what a save endpoint stores: versions compared,
  last-write-wins per property; 409 with `version_conflict` / `lock_lost`.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec
from aiohttp import web

from livepush.collab.feature import Collaboration
from livepush.collab.locks import check_lock, describe_lock
from livepush.collab.save import check_fencing, resolve_save
from livepush.http.api import api_key_bytes, with_api_key
from livepush.protocol.channels import parse_channel
from livepush.protocol.decoding import JsonDecoder
from livepush.protocol.errors import ErrorCode
from livepush.responses import json_error, json_response


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


_decode_lock_check: JsonDecoder[LockCheck] = JsonDecoder(LockCheck, max_depth=None)
_decode_save_resolve: JsonDecoder[SaveResolve] = JsonDecoder(SaveResolve, max_depth=None)


def add_collab_routes(
    app: web.Application, collaboration: Collaboration, api_key: str | None
) -> None:
    """Register the collaboration endpoints of a node's `Collaboration` feature."""
    checked = with_api_key(api_key_bytes(api_key))
    locks = collaboration.locks.store

    @checked
    async def collaborators(request: web.Request) -> web.Response:
        workflow_id = request.match_info["workflowId"]
        parse_channel(f"workflow:{workflow_id}")
        return json_response(await collaboration.rooms.members(workflow_id))

    @checked
    async def lock_check(request: web.Request) -> web.Response:
        try:
            body = _decode_lock_check.decode(await request.read())
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            return json_error(400, ErrorCode.BAD_REQUEST, f"expected {{lock, token}}: {exc}")
        valid = await check_lock(locks, body.lock, body.token)
        current = await describe_lock(locks, body.lock)
        return json_response({"lock": body.lock, "valid": valid, "current": current})

    @checked
    async def save_resolve(request: web.Request) -> web.Response:
        try:
            body = _decode_save_resolve.decode(await request.read())
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            return json_error(400, ErrorCode.BAD_REQUEST, f"invalid save request: {exc}")
        if (body.lock is None) != (body.token is None):
            return json_error(400, ErrorCode.BAD_REQUEST, "send `lock` and `token` together")
        result = None
        if body.lock is not None and body.token is not None:
            result = await check_fencing(locks, body.lock, body.token)
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

    app.router.add_get("/api/v1/workflows/{workflowId}/collaborators", collaborators)
    app.router.add_post("/api/v1/locks/check", lock_check)
    app.router.add_post("/api/v1/saves/resolve", save_resolve)
