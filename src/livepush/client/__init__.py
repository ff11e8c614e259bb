"""An asyncio client for livepush: WebSocket or SSE, automatic reconnection with jittered
backoff across several URLs, exact resume of every channel (each publication delivered once,
in order), a bounded queue of commands while disconnected, transparent reassembly of large
node outputs sent in chunks, execution snapshots.

Usage and guarantees: docs/client.md.
"""

from livepush.client.backoff import Backoff, backoff_ceiling, full_jitter
from livepush.client.core import (
    DEFAULT_IDEMPOTENT,
    Client,
    ClientStats,
    ConnectionState,
    Message,
    StateChange,
    TokenSource,
    random_push_ref,
)
from livepush.client.errors import (
    ClientClosed,
    ClientError,
    CommandError,
    CommandTimeout,
    ConnectionFailed,
    ConnectionLost,
    ConnectionRefused,
    OutputFetchError,
    QueueFull,
)
from livepush.client.outputs import (
    DEFAULT_MAX_OUTPUT_BYTES,
    OUTPUT_DATA_TYPE,
    OUTPUT_ERROR_TYPE,
    OutputAssembler,
)
from livepush.client.positions import Position, format_positions, parse_positions
from livepush.client.sse import SseEvent, SseParser

__all__ = [
    "DEFAULT_IDEMPOTENT",
    "DEFAULT_MAX_OUTPUT_BYTES",
    "OUTPUT_DATA_TYPE",
    "OUTPUT_ERROR_TYPE",
    "Backoff",
    "Client",
    "ClientClosed",
    "ClientError",
    "ClientStats",
    "CommandError",
    "CommandTimeout",
    "ConnectionFailed",
    "ConnectionLost",
    "ConnectionRefused",
    "ConnectionState",
    "Message",
    "OutputAssembler",
    "OutputFetchError",
    "Position",
    "QueueFull",
    "SseEvent",
    "SseParser",
    "StateChange",
    "TokenSource",
    "backoff_ceiling",
    "format_positions",
    "full_jitter",
    "parse_positions",
    "random_push_ref",
]
