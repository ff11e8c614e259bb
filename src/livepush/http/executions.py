"""The execution endpoints (docs/protocol.md, "Executions"):

- `POST /api/v1/executions/events` (API key): publish execution events, one or a batch.
- `GET /api/v1/executions/<id>` (API key or a user token): the execution's snapshot.
- `GET /api/v1/executions/<id>/nodes/<nodeName>/output` (same): a node's stored output.
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from aiohttp import web

from livepush.auth.tokens import TokenVerifier
from livepush.engines.base import EngineUnavailable
from livepush.execution.feature import Executions
from livepush.execution.relay import Event
from livepush.execution.sink import EventRequest
from livepush.http.api import (
    api_key_bytes,
    check_api_key,
    decode_one_or_batch,
    presents_api_key,
    shielded,
)
from livepush.protocol.decoding import JsonDecoder
from livepush.protocol.errors import ErrorCode, ProtocolError
from livepush.requests import HandshakeSettings, authenticate, query_params
from livepush.responses import error_response, json_error, json_response

MAX_EVENTS = 1000
#: Bytes of a stored output read per step when answering a fetch.
READ_BYTES = 1024 * 1024


class ExecutionEvent(msgspec.Struct, forbid_unknown_fields=True):
    """One event to publish, and who follows its execution."""

    type: str
    data: msgspec.Raw
    pushRef: str | None = None
    workflowId: str | None = None


class ExecutionEvents(msgspec.Struct, forbid_unknown_fields=True):
    """Events published in order."""

    events: Annotated[list[ExecutionEvent], msgspec.Meta(min_length=1, max_length=MAX_EVENTS)]


class _Position(msgspec.Struct):
    channel: str
    offset: int | None
    epoch: str | None


_decode_one: JsonDecoder[ExecutionEvent] = JsonDecoder(ExecutionEvent, max_depth=None)
_decode_many: JsonDecoder[ExecutionEvents] = JsonDecoder(ExecutionEvents, max_depth=None)


def _parse(body: bytes) -> tuple[list[ExecutionEvent], bool]:
    return decode_one_or_batch(body, "events", _decode_one, _decode_many)


def add_execution_routes(
    app: web.Application,
    executions: Executions,
    verifier: TokenVerifier,
    handshake: HandshakeSettings,
    api_key: str | None,
) -> None:
    """Register the execution endpoints of a node's `Executions` feature."""
    key = api_key_bytes(api_key)
    settings = executions.settings

    async def publish_events(request: web.Request) -> web.Response:
        refused = check_api_key(request, key)
        if refused is not None:
            return refused
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return json_error(
                413, ErrorCode.PAYLOAD_TOO_LARGE, f"request body over {settings.max_bytes} bytes"
            )
        try:
            items, batch = _parse(body)
            planned: list[Event] = []
            for index, item in enumerate(items):
                try:
                    given = EventRequest(item.type, bytes(item.data), item.pushRef, item.workflowId)
                    planned.append(executions.relay.prepare(given))
                except ProtocolError as exc:
                    where = f"events[{index}]: " if batch else ""
                    raise ProtocolError(exc.code, where + exc.message) from exc
        except ProtocolError as exc:
            status = 413 if exc.code is ErrorCode.PAYLOAD_TOO_LARGE else 400
            return json_error(status, exc.code, exc.message)
        published: list[_Position] = []

        async def publish_all() -> None:
            for event in planned:
                placed = await executions.publish_event(event)
                published.append(_Position(placed.channel, placed.offset, placed.epoch))

        try:
            # shielded: a client that hangs up must not leave the batch half published
            await shielded(publish_all())
        except EngineUnavailable as exc:
            return json_error(503, exc.code, exc.message, published=len(published))
        return json_response({"publications": published})

    async def authorized(request: web.Request, execution_id: str) -> web.Response | None:
        """None when the request may see the execution, else the error response."""
        if presents_api_key(request, key):
            return None
        try:
            identity = authenticate(request, verifier, handshake, query_params(request))
            await executions.authorize(identity, execution_id)
        except ProtocolError as exc:
            return error_response(exc)
        return None

    async def snapshot(request: web.Request) -> web.Response:
        execution_id = request.match_info["execution_id"]
        refused = await authorized(request, execution_id)
        if refused is not None:
            return refused
        try:
            taken = await executions.snapshot(execution_id)
        except ProtocolError as exc:
            return error_response(exc)
        if taken is None:
            return json_error(404, ErrorCode.EXECUTION_NOT_FOUND, f"no execution {execution_id!r}")
        state, position = taken
        return json_response(
            {"channel": f"execution:{execution_id}", "epoch": position.epoch}
            | {"offset": position.offset, "snapshot": state}
        )

    async def output(request: web.Request) -> web.StreamResponse:
        execution_id = request.match_info["execution_id"]
        node_name = request.match_info["node_name"]
        refused = await authorized(request, execution_id)
        if refused is not None:
            return refused
        wanted = request.query.get("executionIndex")
        if wanted is not None and not wanted.isdigit():
            return json_error(400, ErrorCode.BAD_REQUEST, "executionIndex must be a number")
        store = executions.store
        try:
            recorded = await store.state(execution_id)
            entry = _find_output(recorded.fields if recorded else {}, node_name, wanted)
            if entry is None:
                return _not_found(execution_id, node_name)
            index, described = entry
            if "inline" in described:
                inline = msgspec.json.encode(described["inline"])
                return web.Response(body=inline, content_type="application/json")
            size = await store.output_size(execution_id, index)
            if size is None:
                return _not_found(execution_id, node_name)
            response = web.StreamResponse(headers={"Content-Type": "application/json"})
            response.content_length = size
            await response.prepare(request)
            for start in range(0, size, READ_BYTES):
                data = await store.read_output(execution_id, index, start, start + READ_BYTES)
                if not data:
                    break  # expired while being read: the short body tells the client
                await response.write(data)
            await response.write_eof()
            return response
        except ProtocolError as exc:
            return error_response(exc)

    app.router.add_post("/api/v1/executions/events", publish_events)
    app.router.add_get("/api/v1/executions/{execution_id}", snapshot)
    app.router.add_get("/api/v1/executions/{execution_id}/nodes/{node_name}/output", output)


def _find_output(
    fields: dict[str, bytes], node_name: str, wanted: str | None
) -> tuple[str, dict[str, Any]] | None:
    """(executionIndex, output description) of a node's run: the one asked for, or the
    latest."""
    best: tuple[int, dict[str, Any]] | None = None
    for field, value in fields.items():
        if not field.startswith("d:"):
            continue
        index = int(field[2:])
        if wanted is not None and index != int(wanted):
            continue
        described = msgspec.json.decode(value)
        if described.get("nodeName") != node_name:
            continue
        if best is None or index > best[0]:
            best = (index, described)
    return None if best is None else (str(best[0]), best[1])


def _not_found(execution_id: str, node_name: str) -> web.Response:
    return json_error(
        404,
        ErrorCode.OUTPUT_NOT_FOUND,
        f"no stored output of node {node_name!r} in execution {execution_id!r} "
        "(unknown, or its retention expired)",
    )
