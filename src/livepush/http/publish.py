"""`POST /api/v1/publish`: publish one message or a batch, in order.

The body's `data` objects are kept as the raw JSON bytes they arrived as (`msgspec.Raw`), so
a message is never decoded and re-encoded on its way to the browsers. The whole request is
checked (`Node.prepare`: once per message and channel) before anything is published, so a bad
batch publishes nothing.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from aiohttp import web

from livepush.core.extensions import Prepared
from livepush.core.node import Node
from livepush.engines.base import EngineUnavailable
from livepush.http.api import api_key_bytes, check_api_key, decode_one_or_batch, shielded
from livepush.protocol.channels import SYSTEM, is_valid_user_id, push_channel, user_channel
from livepush.protocol.decoding import JsonDecoder
from livepush.protocol.envelope import Priority, Publication
from livepush.protocol.errors import ErrorCode, ProtocolError
from livepush.responses import json_error, json_response

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


_decode_single: JsonDecoder[PublishMessage] = JsonDecoder(PublishMessage, max_depth=None)
_decode_batch: JsonDecoder[PublishBatch] = JsonDecoder(PublishBatch, max_depth=None)


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


def _decode(body: bytes) -> tuple[list[PublishMessage], bool]:
    return decode_one_or_batch(body, "messages", _decode_single, _decode_batch)


def _position(publication: Publication) -> PublishedPosition:
    return PublishedPosition(publication.channel, publication.offset, publication.epoch)


class PublishHandler:
    """The publish endpoint of one node."""

    def __init__(self, node: Node, api_key: str | None, max_bytes: int) -> None:
        self._node = node
        self._max_bytes = max_bytes
        self._api_key = api_key_bytes(api_key)

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
                self._plan(message, index if batch else None)
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

    async def _publish_all(
        self, plan: list[list[Publication | Prepared]], results: list[PublishResult]
    ) -> None:
        for prepared in plan:
            published = [await self._node.publish_prepared(p) for p in prepared]
            results.append(PublishResult([_position(p) for p in published]))

    def _plan(self, message: PublishMessage, index: int | None) -> list[Publication | Prepared]:
        """Check and encode a message for each of its channels (a bad one names its index)."""
        priority = Priority.EPHEMERAL if message.priority == "ephemeral" else Priority.RELIABLE
        data = bytes(message.data)
        try:
            return [
                self._node.prepare(channel, message.type, data, priority=priority, key=message.key)
                for channel in targets(message)
            ]
        except ProtocolError as exc:
            where = "" if index is None else f"messages[{index}]: "
            raise ProtocolError(exc.code, where + exc.message) from exc
