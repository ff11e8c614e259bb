"""What the client hands to the application: messages, state changes, counters, and the
listener signatures; and the reading of a server message into a `Message`."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, TypeAlias

from livepush.client.positions import Position
from livepush.client.transports import TransportName


class ConnectionState(StrEnum):
    """Where the client stands."""

    #: Not started yet (before `connect()`).
    IDLE = "idle"
    #: A connection attempt is under way.
    CONNECTING = "connecting"
    #: Connected: the server's `connected` message arrived.
    CONNECTED = "connected"
    #: An established connection ended (`code`/`reason` say why); a reconnect follows.
    DISCONNECTED = "disconnected"
    #: Waiting `delay` seconds before the next attempt.
    RECONNECTING = "reconnecting"
    #: For good: `close()`, a permanent refusal, a 4009/4003 close, or `max_attempts`.
    CLOSED = "closed"


@dataclass(frozen=True, slots=True)
class StateChange:
    """A state transition, as given to `on_state` listeners.

    - `reason`: human-readable cause (close reason, error, "closed by the client", ...);
    - `code`: the WebSocket close code (or SSE `disconnect` code) that ended a connection,
      1006 for a connection cut without one;
    - `status`, `error_code`: the HTTP status and livepush error code of a refused handshake;
    - `error`: the exception behind a failed attempt or a closed client;
    - `attempt`: consecutive failed attempts so far; `delay`: seconds until the next attempt;
    - `url`, `transport`: the server and transport concerned."""

    state: ConnectionState
    previous: ConnectionState
    reason: str | None = None
    code: int | None = None
    status: int | None = None
    error_code: str | None = None
    error: BaseException | None = None
    attempt: int = 0
    delay: float | None = None
    url: str | None = None
    transport: TransportName | None = None


@dataclass(frozen=True, slots=True)
class Message:
    """A message from the server, as given to `on` and `on_channel` listeners.

    Publications have `channel`, and (unless ephemeral) `offset` and `epoch`; server messages
    (`connected`, `tokenExpiring`, `channelReset`, ...) have only `type` and `data`. `raw` is
    the whole decoded JSON object."""

    type: str
    data: Any
    channel: str | None = None
    offset: int | None = None
    epoch: str | None = None
    raw: Mapping[str, Any] = field(default_factory=dict)

    @property
    def position(self) -> Position | None:
        """The publication's stream position (None for ephemeral and server messages)."""
        if self.epoch is None or self.offset is None:
            return None
        return Position(self.epoch, self.offset)


@dataclass(frozen=True, slots=True)
class ClientStats:
    """Counters since the client was created."""

    #: Connections that reached `connected`.
    connections: int
    #: Publications handed to listeners.
    delivered: int
    #: Publications dropped because they were already delivered (replayed after a resume).
    duplicates_dropped: int
    #: Publications the server replayed after reconnects (`missed` of recovered channels).
    recovered: int
    #: Discontinuities reported to `on_recovery_failed` listeners.
    recovery_failures: int
    #: Commands sent again after a reconnect (idempotent, reply lost with the connection).
    commands_resent: int
    #: Chunked outputs reassembled and delivered as `nodeExecuteAfterData`.
    outputs_reassembled: int = 0
    #: `executionOutputError` events emitted (outputs refused, corrupt or abandoned).
    output_errors: int = 0


MessageCallback: TypeAlias = Callable[[Message], Any]
StateCallback: TypeAlias = Callable[[StateChange], Any]
RecoveryCallback: TypeAlias = Callable[[str, Position], Any]
Unsubscribe: TypeAlias = Callable[[], None]


def position_of(data: Mapping[str, Any]) -> Position | None:
    """The `epoch` and `offset` of a reply, a `connected` entry or a `channelReset`, if both
    are there and well typed."""
    epoch, offset = data.get("epoch"), data.get("offset")
    if isinstance(epoch, str) and isinstance(offset, int) and not isinstance(offset, bool):
        return Position(epoch, offset)
    return None


def to_message(raw: dict[str, Any]) -> Message:
    """A decoded server message as a `Message` (fields of the wrong type are left out)."""
    channel = raw.get("channel")
    offset = raw.get("offset")
    epoch = raw.get("epoch")
    return Message(
        type=str(raw.get("type")),
        data=raw.get("data"),
        channel=channel if isinstance(channel, str) else None,
        offset=offset if isinstance(offset, int) else None,
        epoch=epoch if isinstance(epoch, str) else None,
        raw=raw,
    )
