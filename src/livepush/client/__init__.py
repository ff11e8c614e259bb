"""An asyncio client for livepush: WebSocket or SSE, automatic reconnection with jittered
backoff across several URLs, exact resume of every channel (each publication delivered once,
in order), a bounded queue of commands while disconnected, transparent reassembly of large
node outputs sent in chunks, execution snapshots.

The wire contract (resume positions, the envelope's types, close and error codes) is
`livepush.protocol`'s; the client imports nothing else of livepush.

Usage and guarantees: docs/client.md.
"""

from livepush.client.backoff import Backoff, backoff_ceiling, full_jitter
from livepush.client.core import Client, TokenSource, random_push_ref
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
from livepush.client.messages import ClientStats, ConnectionState, Message, StateChange
from livepush.client.outputs import (
    DEFAULT_MAX_OUTPUT_BYTES,
    OUTPUT_DATA_TYPE,
    OUTPUT_ERROR_TYPE,
    OutputAssembler,
)
from livepush.client.positions import Position
from livepush.client.queue import DEFAULT_IDEMPOTENT
from livepush.client.sse import SseEvent, SseParser
from livepush.protocol.resume import format_positions, parse_positions

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
