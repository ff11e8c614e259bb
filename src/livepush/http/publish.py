"""`POST /api/v1/publish`: publish one message or a batch, in order.

The body's `data` objects are kept as the raw JSON bytes they arrived as (`msgspec.Raw`), so
a message is never decoded and re-encoded on its way to the browsers.
"""

from __future__ import annotations

import hmac
from typing import Annotated, Any, Literal

import msgspec
from aiohttp import web

from livepush.core.node import Node
from livepush.engines.base import EngineUnavailable
from livepush.execution.relay import ExecutionSettings, prepare
from livepush.http.errors import json_error, json_response, shielded
from livepush.protocol.channels import (
    SYSTEM,
    is_valid_user_id,
    parse_channel,
    push_channel,
    user_channel,
)
from livepush.protocol.envelope import Priority, Publication, compact_raw_object, validate_type
from livepush.protocol.errors import ErrorCode, ProtocolError
from livepush.protocol.execution import EXECUTION_EVENTS, validate_event

MAX_BATCH = 1000


class PublishMessage(msgspec.Struct, forbid_unknown_fields=True):
    """One message and exactly one target."""

    type: str
    data: msgspec.Raw
    channel: str | None = None
    pushRef: str | None = None
    userIds: Annotated[list[str], msgspec.Meta(min_length=1, max_length=1000)] | None = None
    broadcast: bool = False
    priority: Literal["reliable", "ephemeral"] = "reliable"
    key: Annotated[str, msgspec.Meta(max_length=256)] | None = None


class PublishBatch(msgspec.Struct, forbid_unknown_fields=True):
    """Many messages, published in order."""

    messages: Annotated[list[PublishMessage], msgspec.Meta(min_length=1, max_length=MAX_BATCH)]


class PublishedPosition(msgspec.Struct):
    """Where a publication landed (offset and epoch are absent for ephemeral messages)."""

    channel: str
    offset: int | None
    epoch: str | None


class PublishResult(msgspec.Struct):
    """The reply to a single-message publish: one entry per target channel."""

    publications: list[PublishedPosition]


class PublishBatchResult(msgspec.Struct):
    """The reply to a batch publish, in request order."""

    messages: list[PublishResult]


_decode_single = msgspec.json.Decoder(PublishMessage)
_decode_batch = msgspec.json.Decoder(PublishBatch)


def targets(message: PublishMessage) -> list[str]:
    """The channels a message goes to; exactly one kind of target must be given."""
    given = [
        name
        for name, present in (
            ("channel", message.channel is not None),
            ("pushRef", message.pushRef is not None),
            ("userIds", message.userIds is not None),
            ("broadcast", message.broadcast),
        )
        if present
    ]
    if len(given) != 1:
        raise ProtocolError(
            ErrorCode.BAD_REQUEST,
            "give exactly one target: channel, pushRef, userIds or broadcast"
            + (f" (got {', '.join(given)})" if given else ""),
        )
    if message.channel is not None:
        return [message.channel]
    if message.pushRef is not None:
        return [push_channel(message.pushRef)]
    if message.userIds is not None:
        bad = [u for u in message.userIds if not is_valid_user_id(u)]
        if bad:
            raise ProtocolError(ErrorCode.BAD_REQUEST, f"invalid user id {bad[0]!r}")
        return [user_channel(u) for u in dict.fromkeys(message.userIds)]
    return [SYSTEM]


def decode_one_or_batch(
    body: bytes, batch_key: str, one: msgspec.json.Decoder[Any], batch: msgspec.json.Decoder[Any]
) -> tuple[list[Any], bool]:
    """A request body holding one item, or `{batch_key: [items]}`: (items, whether a batch).
    Bad JSON is `invalid_json`; a wrong shape `bad_request` with msgspec's path."""
    try:
        head: Any = msgspec.json.decode(body)
    except msgspec.DecodeError as exc:
        raise ProtocolError(ErrorCode.INVALID_JSON, f"body is not valid JSON: {exc}") from exc
    if not isinstance(head, dict):
        raise ProtocolError(ErrorCode.BAD_REQUEST, "body must be a JSON object")
    try:
        if batch_key in head:
            return list(getattr(batch.decode(body), batch_key)), True
        return [one.decode(body)], False
    except msgspec.ValidationError as exc:
        raise ProtocolError(ErrorCode.BAD_REQUEST, f"invalid request: {exc}") from exc


def _decode(body: bytes) -> tuple[list[PublishMessage], bool]:
    return decode_one_or_batch(body, "messages", _decode_single, _decode_batch)


def _position(publication: Publication) -> PublishedPosition:
    return PublishedPosition(publication.channel, publication.offset, publication.epoch)


def presents_api_key(request: web.Request, api_key: bytes | None) -> bool:
    """Whether the request carries the API key (`Authorization: Bearer <key>`)."""
    authorization = request.headers.get("Authorization", "")
    presented = authorization[7:].strip() if authorization[:7].lower() == "bearer " else ""
    return api_key is not None and hmac.compare_digest(presented.encode(), api_key)


def check_api_key(request: web.Request, api_key: bytes | None) -> web.Response | None:
    """The error response for a request without the API key, or None when it has it."""
    if api_key is None:
        return json_error(503, ErrorCode.PUBLISH_DISABLED, "the server API needs LIVEPUSH_API_KEY")
    if not presents_api_key(request, api_key):
        return json_error(
            401, ErrorCode.INVALID_API_KEY, "send `Authorization: Bearer <LIVEPUSH_API_KEY>`"
        )
    return None


class PublishHandler:
    """The publish endpoint of one node."""

    def __init__(self, node: Node, api_key: str | None, max_bytes: int) -> None:
        self._node = node
        self._max_bytes = max_bytes
        self._api_key = api_key.encode() if api_key else None

    async def handle(self, request: web.Request) -> web.Response:
        """Authenticate, validate the whole request, then publish every message in order."""
        refused = check_api_key(request, self._api_key)
        if refused is not None:
            return refused
        try:
            if (request.content_length or 0) > self._max_bytes:
                raise web.HTTPRequestEntityTooLarge(
                    max_size=self._max_bytes, actual_size=request.content_length or 0
                )
            body = await request.read()
            if len(body) > self._max_bytes:
                raise web.HTTPRequestEntityTooLarge(max_size=self._max_bytes, actual_size=len(body))
        except web.HTTPRequestEntityTooLarge:
            return json_error(
                413,
                ErrorCode.PAYLOAD_TOO_LARGE,
                f"request body over {self._max_bytes} bytes",
            )
        try:
            messages, batch = _decode(body)
            plan = [
                _plan(message, index if batch else None, self._node.settings.execution)
                for index, message in enumerate(messages)
            ]
        except ProtocolError as exc:
            return json_error(400, exc.code, exc.message)
        # Shielded: a client that hangs up mid-batch must not leave it half published.
        results: list[PublishResult] = []
        try:
            await shielded(self._publish_all(plan, results))
        except EngineUnavailable as exc:
            # The messages before this one are published; the client may retry the rest.
            return json_error(503, exc.code, exc.message, published=len(results))
        if batch:
            return json_response(PublishBatchResult(results))
        return json_response(results[0])

    async def _publish_all(self, plan: list[_Planned], results: list[PublishResult]) -> None:
        for message, channels, data in plan:
            priority = Priority.EPHEMERAL if message.priority == "ephemeral" else Priority.RELIABLE
            published = [
                await self._node.publish(
                    channel, message.type, data, priority=priority, key=message.key
                )
                for channel in channels
            ]
            results.append(PublishResult([_position(p) for p in published]))


_Planned = tuple[PublishMessage, list[str], bytes]


def _plan(message: PublishMessage, index: int | None, execution: ExecutionSettings) -> _Planned:
    """Validate before anything is published, so a bad batch publishes nothing."""
    where = "" if index is None else f"messages[{index}]: "
    try:
        channels = targets(message)
        validate_type(message.type)
        data = compact_raw_object(bytes(message.data))
        for channel in channels:
            parse_channel(channel)
            if message.type in EXECUTION_EVENTS and channel.startswith("execution:"):
                prepare(message.type, data, execution, channel=channel)
            else:
                validate_event(message.type, data)
    except ProtocolError as exc:
        raise ProtocolError(exc.code, where + exc.message) from exc
    return message, channels, data
