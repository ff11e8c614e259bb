"""The Yjs wire protocol (y-protocols, as y-websocket speaks it), pure: bytes in, messages out.

A message is `varUint type` then its body:

- sync (0): `varUint step` (0: step 1, a state vector; 1: step 2, an update answering a step
  1; 2: an update), then the payload as `varUint8Array`;
- awareness (1): an awareness update as `varUint8Array`: `varUint n` then n times
  `varUint clientID, varUint clock, varString state` (JSON; `null` means gone);
- auth (2): server to client only: `varUint 0` (permission denied) and `varString reason`;
- queryAwareness (3): no body; answered with every known awareness state.

n8n's experimental CRDT endpoint (`{rest}/crdt?docId=`) frames differently: one byte `0`
followed by a raw Yjs update (no sync steps: each side sends its whole state when it connects,
then its updates) or `1` followed by a raw awareness update. `N8N` below reads and writes that.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

import msgspec
from pycrdt import (
    Decoder,
    YMessageType,
    YSyncMessageType,
    create_awareness_message,
    create_update_message,
    get_state,
    write_var_uint,
)

from livepush.protocol.decoding import decode
from livepush.protocol.errors import ErrorCode, ProtocolError

MESSAGE_SYNC = int(YMessageType.SYNC)
MESSAGE_AWARENESS = int(YMessageType.AWARENESS)
MESSAGE_AUTH = 2
MESSAGE_QUERY_AWARENESS = 3

SYNC_STEP1 = int(YSyncMessageType.SYNC_STEP1)
SYNC_STEP2 = int(YSyncMessageType.SYNC_STEP2)
SYNC_UPDATE = int(YSyncMessageType.SYNC_UPDATE)

#: The auth message's only kind (y-protocols auth.js `messagePermissionDenied`).
PERMISSION_DENIED = 0
#: An update that changes nothing: no structs, no deletions.
EMPTY_UPDATE = b"\x00\x00"
QUERY_AWARENESS = bytes((MESSAGE_QUERY_AWARENESS,))


class MalformedMessage(ProtocolError):
    """A message that is not valid y-protocols (or not a valid Yjs update)."""

    def __init__(self, message: str) -> None:
        super().__init__(ErrorCode.INVALID_MESSAGE, message)


@dataclass(frozen=True, slots=True)
class Message:
    """One decoded client message. `step` is the sync step for sync messages, else -1."""

    kind: int
    step: int
    payload: bytes


@dataclass(frozen=True, slots=True)
class AwarenessEntry:
    """One client's awareness state: `state` is its JSON text, `"null"` once it is gone."""

    client_id: int
    clock: int
    state: str

    @property
    def gone(self) -> bool:
        """True for a removal."""
        return self.state == "null"


def _read_uint(decoder: Decoder) -> int:
    try:
        return decoder.read_var_uint()
    except (RuntimeError, IndexError) as exc:
        raise MalformedMessage("truncated message (a variable-length integer)") from exc


def _read_bytes(decoder: Decoder) -> bytes:
    try:
        payload = decoder.read_message()
    except (RuntimeError, IndexError) as exc:
        raise MalformedMessage("truncated message (a length prefix)") from exc
    if payload is None or decoder.length < 0:
        raise MalformedMessage("truncated message (shorter than its length prefix)")
    return bytes(payload)


def check_update(update: bytes) -> None:
    """Raise `MalformedMessage` unless `update` decodes as a Yjs update (v1)."""
    try:
        get_state(update)
    except ValueError as exc:
        raise MalformedMessage(f"not a Yjs update: {exc}") from exc


def decode_state_vector(data: bytes) -> dict[int, int]:
    """A Yjs state vector: client id -> clock."""
    decoder = Decoder(data)
    count = _read_uint(decoder)
    if count > len(data):
        raise MalformedMessage("state vector: more entries than bytes")
    vector: dict[int, int] = {}
    for _ in range(count):
        client = _read_uint(decoder)
        vector[client] = _read_uint(decoder)
    return vector


def adds_structs(update: bytes) -> bool:
    """Whether a v1 update carries any struct (not only deletions): its first number counts
    the clients it has structs of."""
    return bool(update) and update[0] != 0


def parse_message(data: bytes) -> Message:
    """Decode and check one client message (updates are decoded in full)."""
    decoder = Decoder(data)
    kind = _read_uint(decoder)
    if kind == MESSAGE_SYNC:
        step = _read_uint(decoder)
        payload = _read_bytes(decoder)
        if step == SYNC_STEP1:
            decode_state_vector(payload)
        elif step in (SYNC_STEP2, SYNC_UPDATE):
            check_update(payload)
        else:
            raise MalformedMessage(f"unknown sync step {step}")
        return Message(kind, step, payload)
    if kind == MESSAGE_AWARENESS:
        return Message(kind, -1, _read_bytes(decoder))
    if kind == MESSAGE_QUERY_AWARENESS:
        return Message(kind, -1, b"")
    if kind == MESSAGE_AUTH:
        raise MalformedMessage("auth messages go from the server to clients")
    raise MalformedMessage(f"unknown message type {kind}")


def parse_n8n_message(data: bytes) -> Message:
    """Decode one message of n8n's framing: a type byte and a raw payload."""
    if not data:
        raise MalformedMessage("empty message")
    kind, payload = data[0], bytes(data[1:])
    if kind == MESSAGE_SYNC:
        check_update(payload)
        return Message(kind, SYNC_UPDATE, payload)
    if kind == MESSAGE_AWARENESS:
        return Message(kind, -1, payload)
    raise MalformedMessage(f"unknown message type {kind}")


def decode_awareness(payload: bytes) -> list[AwarenessEntry]:
    """The entries of an awareness update; every state must be JSON."""
    decoder = Decoder(payload)
    count = _read_uint(decoder)
    if count > len(payload):
        raise MalformedMessage("awareness update: more entries than bytes")
    entries = []
    for _ in range(count):
        client_id = _read_uint(decoder)
        clock = _read_uint(decoder)
        raw = _read_bytes(decoder)
        try:
            state = raw.decode()
            decode(raw)
        except (UnicodeDecodeError, msgspec.DecodeError) as exc:
            raise MalformedMessage(f"awareness state of client {client_id} is not JSON") from exc
        entries.append(AwarenessEntry(client_id, clock, state))
    return entries


def encode_awareness(entries: list[AwarenessEntry]) -> bytes:
    """An awareness update holding `entries`."""
    parts = [write_var_uint(len(entries))]
    for entry in entries:
        state = entry.state.encode()
        parts += [
            write_var_uint(entry.client_id),
            write_var_uint(entry.clock),
            write_var_uint(len(state)),
            state,
        ]
    return b"".join(parts)


def sync_step1(state_vector: bytes) -> bytes:
    """A sync step 1 message (our state vector: "send me what I miss")."""
    return bytes((MESSAGE_SYNC, SYNC_STEP1)) + write_var_uint(len(state_vector)) + state_vector


def sync_step2(update: bytes) -> bytes:
    """A sync step 2 message (what the peer's state vector misses)."""
    return bytes((MESSAGE_SYNC, SYNC_STEP2)) + write_var_uint(len(update)) + update


def permission_denied(reason: str) -> bytes:
    """y-protocols' auth message refusing something, with a reason."""
    text = reason.encode()
    return bytes((MESSAGE_AUTH, PERMISSION_DENIED)) + write_var_uint(len(text)) + text


class Dialect(Enum):
    """How a connection frames its messages."""

    #: y-protocols: y-websocket, the Python client.
    YJS = "yjs"
    #: n8n's experimental CRDT framing.
    N8N = "n8n"

    def parse(self, data: bytes) -> Message:
        """Decode a client message."""
        return parse_message(data) if self is Dialect.YJS else parse_n8n_message(data)

    def update(self, update: bytes) -> bytes:
        """The message carrying a document update."""
        if self is Dialect.YJS:
            return create_update_message(update)
        return bytes((MESSAGE_SYNC,)) + update

    def awareness(self, payload: bytes) -> bytes:
        """The message carrying an awareness update."""
        if self is Dialect.YJS:
            return create_awareness_message(payload)
        return bytes((MESSAGE_AWARENESS,)) + payload
