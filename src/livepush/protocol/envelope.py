"""Server-to-client messages: the n8n envelope `{"type", "data"}` plus livepush's stream
metadata (`channel`, `offset`, `epoch`) as extra top-level fields that n8n clients ignore.

A `Publication` is encoded exactly once, when the broker has given it its stream position; the
transports then derive their frames from those bytes once per publication, not per recipient.
"""

from __future__ import annotations

import re
import time
from enum import IntEnum
from typing import Any, Final, NamedTuple

import msgspec

from livepush.protocol.channels import parse_channel
from livepush.protocol.errors import ErrorCode, ProtocolError
from livepush.protocol.execution import validate_event

_TYPE = re.compile(r"[A-Za-z][A-Za-z0-9_.:\-]{0,63}")

#: Control messages: what the server sends that is never a publication (replies, errors, the
#: connection's lifecycle, the pieces of a chunked output), whatever fields it carries. A client
#: routes them itself; only other types can be a channel's messages.
CONTROL_TYPES: Final = frozenset(
    {
        "reply",
        "error",
        "connected",
        "unsubscribed",
        "disconnect",
        "tokenExpiring",
        "channelReset",
        "executionOutputChunk",
    }
)

#: Types the server itself emits; publishers may not use them, so clients can trust them.
RESERVED_TYPES: Final = CONTROL_TYPES | frozenset(
    {
        # executions (livepush/execution): a connection follows an execution's stream; a
        # large node output announced (its pieces are the control `executionOutputChunk`)
        "executionStream",
        "executionOutput",
        # collaboration (livepush/collab): batched cursors and the like, the signal between
        # nodes, node locks
        "collabEphemeral",
        "collabSignal",
        "nodeLocked",
        "nodeUnlocked",
    }
)

_encode = msgspec.json.encode


class Priority(IntEnum):
    """Delivery class of a publication under back-pressure."""

    #: Kept in history, never dropped: a client that cannot keep up is disconnected instead.
    RELIABLE = 0
    #: Not kept in history, coalesced by key, dropped first when a client falls behind.
    EPHEMERAL = 1


class StreamPosition(NamedTuple):
    """Where a channel's stream stands: its epoch and the offset of its newest publication."""

    epoch: str
    offset: int


def validate_type(message_type: object) -> str:
    """Return the message type if publishers may use it, else raise `invalid_message`."""
    if not isinstance(message_type, str) or not _TYPE.fullmatch(message_type):
        raise ProtocolError(
            ErrorCode.INVALID_MESSAGE,
            "type must be 1-64 characters: a letter, then letters, digits, _ . : -",
        )
    if message_type in RESERVED_TYPES:
        raise ProtocolError(
            ErrorCode.INVALID_MESSAGE, f"type {message_type!r} is reserved for the server"
        )
    return message_type


class Publication:
    """One message in one channel, with its encoded envelope."""

    __slots__ = (
        "channel",
        "data",
        "epoch",
        "key",
        "offset",
        "payload",
        "priority",
        "published_at",
        "sse_data",
        "type",
        "ws_frame",
    )

    def __init__(
        self,
        channel: str,
        message_type: str,
        data: bytes,
        *,
        offset: int | None = None,
        epoch: str | None = None,
        priority: Priority = Priority.RELIABLE,
        key: str | None = None,
        published_at: float | None = None,
    ) -> None:
        self.channel = channel
        self.type = message_type
        self.data = data
        self.offset = offset
        self.epoch = epoch
        self.priority = priority
        self.key = key
        self.published_at = time.time() if published_at is None else published_at
        # Type and channel are validated to a quote-free alphabet, and epochs are hex, so the
        # envelope is assembled by concatenation: no second JSON pass over `data`.
        head = b'{"type":"' + message_type.encode() + b'","data":' + data
        tail = b',"channel":"' + channel.encode() + b'"'
        if offset is not None:
            tail += b',"offset":%d,"epoch":"%s"' % (offset, str(epoch).encode())
        self.payload: bytes = head + tail + b"}"
        #: Transport encodings, filled once by the first transport that sends this publication.
        self.ws_frame: bytes | None = None
        self.sse_data: bytes | None = None

    @property
    def position(self) -> StreamPosition | None:
        """The stream position, or None for ephemeral publications (outside the stream)."""
        if self.offset is None or self.epoch is None:
            return None
        return StreamPosition(self.epoch, self.offset)

    def with_position(self, offset: int, epoch: str) -> Publication:
        """A copy placed at a stream position (brokers call this when they assign one)."""
        return Publication(
            self.channel,
            self.type,
            self.data,
            offset=offset,
            epoch=epoch,
            priority=self.priority,
            key=self.key,
            published_at=self.published_at,
        )

    def __repr__(self) -> str:
        return f"Publication({self.channel!r}, {self.type!r}, offset={self.offset})"


def encode_data(data: Any) -> bytes:
    """Encode a publication's `data` object once, refusing anything but a JSON object."""
    if not isinstance(data, dict):
        raise ProtocolError(ErrorCode.INVALID_MESSAGE, "data must be a JSON object")
    try:
        return _encode(data)
    except (TypeError, ValueError, OverflowError) as exc:
        message = f"data is not JSON-encodable: {exc}"
        raise ProtocolError(ErrorCode.INVALID_MESSAGE, message) from exc


def compact_raw_object(raw: bytes) -> bytes:
    """Check that raw JSON bytes hold an object and remove newlines (SSE `data:` is one line)."""
    stripped = raw.strip()
    if not stripped.startswith(b"{"):
        raise ProtocolError(ErrorCode.INVALID_MESSAGE, "data must be a JSON object")
    if b"\n" in stripped or b"\r" in stripped:
        return msgspec.json.format(stripped, indent=-1)
    return stripped


def new_publication(
    channel: str,
    message_type: str,
    data: dict[str, Any] | bytes,
    *,
    priority: Priority = Priority.RELIABLE,
    key: str | None = None,
    max_bytes: int,
) -> Publication:
    """A validated publication (not yet placed in its stream): what every publisher checks.

    `data` is a dict, or the JSON bytes of an object (as received and validated by the HTTP
    API, so they are never decoded and re-encoded). Bytes are trusted to be valid JSON: only
    their first character is checked."""
    parse_channel(channel)
    validate_type(message_type)
    encoded = compact_raw_object(data) if isinstance(data, bytes) else encode_data(data)
    validate_event(message_type, encoded)
    if len(encoded) > max_bytes:
        raise ProtocolError(
            ErrorCode.PAYLOAD_TOO_LARGE, f"data is {len(encoded)} bytes; the limit is {max_bytes}"
        )
    if key is not None and (not isinstance(key, str) or len(key) > 256):
        raise ProtocolError(ErrorCode.INVALID_MESSAGE, "key must be a string of <= 256 chars")
    return Publication(channel, message_type, encoded, priority=priority, key=key)


def control_message(message_type: str, data: dict[str, Any], request_id: Any = None) -> bytes:
    """Encode a server message that is not a publication (reply, error, connected...)."""
    body: dict[str, Any] = {"type": message_type}
    if request_id is not None:
        body["id"] = request_id
    body["data"] = data
    return _encode(body)


def error_message(code: ErrorCode, message: str, request_id: Any = None) -> bytes:
    """Encode an error frame with a stable code."""
    return control_message("error", {"code": code.value, "message": message}, request_id)
