"""The livepush client: one logical connection that survives network failures.

One supervisor task per client connects, serves the connection (reading in order, while a
sender task writes queued commands), and on any failure reconnects with jittered exponential
backoff to the next URL, resuming every channel from the last delivered position. Listeners
run in a dispatcher task, in the order the events happened, so a listener may itself await a
command without blocking the reading of its reply.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import itertools
import logging
import random
import secrets
import ssl as ssl_module
import string
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from types import TracebackType
from typing import Any, Final, Literal, TypeAlias
from urllib.parse import urlsplit

import aiohttp

from livepush.client.backoff import Backoff
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
    OUTPUT_ABANDONED,
    OUTPUT_DATA_TYPE,
    OUTPUT_ERROR_TYPE,
    Assembly,
    OutputAssembler,
    is_chunked_marker,
)
from livepush.client.positions import (
    ChannelTracker,
    Position,
    Verdict,
    format_positions,
    parse_positions,
)
from livepush.client.transports import (
    ABNORMAL_CLOSURE,
    Connection,
    Dialer,
    Frame,
    HandshakeFailed,
    PostFailed,
    RequestFailed,
    SseConnection,
    TransportName,
    http_base,
    push_url,
)

log = logging.getLogger(__name__)

#: A token, or a function (sync or async) that returns a fresh one; called on every connect.
TokenSource: TypeAlias = str | Callable[[], str | Awaitable[str]]
TransportMode: TypeAlias = Literal["auto", "websocket", "sse"]

#: Commands that are safe to send twice: re-sent after a reconnect if their reply was lost.
DEFAULT_IDEMPOTENT: Final = frozenset(
    {
        "subscribe",
        "unsubscribe",
        "ping",
        "presence",
        "executionSnapshot",
        "workflowOpened",
        "workflowClosed",
        "presenceUpdate",
    }
)
#: Close codes after which the client does not reconnect.
NO_RECONNECT_CODES: Final = frozenset({4003, 4009})
#: HTTP statuses of a refused handshake that retrying cannot fix.
PERMANENT_STATUSES: Final = frozenset({400, 401, 403, 409})
#: Message types the server sends (never publications).
SERVER_TYPES: Final = frozenset(
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
_RATE_LIMITED_CLOSE: Final = 4029
#: Listener events waiting: the reader pauses at the high mark until the low one.
_EVENTS_HIGH: Final = 10_000
_EVENTS_LOW: Final = 1_000
_PUSH_REF_ALPHABET: Final = string.ascii_lowercase + string.digits


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


@dataclass(eq=False, slots=True)
class _Outgoing:
    """A message waiting to be sent or for its reply."""

    body: dict[str, Any]
    future: asyncio.Future[dict[str, Any]] | None
    idempotent: bool

    @property
    def id(self) -> int | None:
        value = self.body.get("id")
        return value if isinstance(value, int) else None

    @property
    def type(self) -> str:
        return str(self.body["type"])


@dataclass(slots=True)
class _Ended:
    connected: bool
    code: int | None
    reason: str
    error: BaseException | None = None


class _Stop(Exception):
    """The supervisor stops for good (the client is closed)."""

    def __init__(self, error: ClientError, change: StateChange) -> None:
        super().__init__(str(error))
        self.error = error
        self.change = change


def random_push_ref() -> str:
    """A pushRef like n8n's: 10 lowercase alphanumerics."""
    return "".join(secrets.choice(_PUSH_REF_ALPHABET) for _ in range(10))


class Client:
    """An asyncio client of a livepush server: one logical connection that survives network
    failures, resuming every channel exactly where it left off.

    ```python
    async with Client("http://127.0.0.1:5680", token=get_token, channels=["workflow:42"]) as c:
        c.on_channel("workflow:42", lambda m: print(m.type, m.data))
        await c.command("ping")
        await asyncio.sleep(60)
    ```

    See docs/client.md for every option and guarantee.
    """

    def __init__(
        self,
        urls: str | Sequence[str],
        *,
        token: TokenSource,
        push_ref: str | None = None,
        channels: Iterable[str] = (),
        transport: TransportMode = "auto",
        rest_prefix: str = "/rest",
        backoff_base: float = 0.5,
        backoff_cap: float = 30.0,
        max_attempts: int | None = None,
        command_queue_size: int = 100,
        command_timeout: float = 10.0,
        connect_timeout: float = 10.0,
        heartbeat: float | None = 30.0,
        idempotent_commands: Iterable[str] = DEFAULT_IDEMPOTENT,
        auto_refresh: bool = True,
        headers: Mapping[str, str] | None = None,
        ssl: ssl_module.SSLContext | bool = True,
        max_message_size: int = 64 * 1024 * 1024,
        max_output_bytes: int = DEFAULT_MAX_OUTPUT_BYTES,
        rng: random.Random | None = None,
    ) -> None:
        """Configure the client; nothing happens until `connect()`.

        Args:
            urls: the server's base URL (`http://host:port`, or with a path prefix), or a list
                of them tried in turn (round robin, one step per failure).
            token: the JWT, or a sync/async callable returning a fresh one (called on every
                connect, and on `tokenExpiring` when `auto_refresh`).
            push_ref: the tab id (1-64 of `A-Z a-z 0-9 _ -`); random by default. Reconnects
                reuse it, so the `push:<pushRef>` channel is resumed too.
            channels: channels to subscribe to in the handshake.
            transport: "websocket", "sse", or "auto" (WebSocket, falling back to SSE for a URL
                whose WebSocket handshake is refused; the choice is remembered per URL).
            rest_prefix: the server's REST prefix; the push endpoint is `{rest_prefix}/push`.
            backoff_base, backoff_cap: the reconnection delay after `n` consecutive failures
                is uniform in `[0, min(cap, base * 2**n)]`.
            max_attempts: consecutive failed attempts before giving up (None: never).
            command_queue_size: most commands waiting while disconnected (`QueueFull` beyond).
            command_timeout: seconds a command may take, queue time included.
            connect_timeout: seconds for one attempt, up to the `connected` message.
            heartbeat: WebSocket ping interval in seconds (a missing pong drops the
                connection); None disables.
            idempotent_commands: command types re-sent after a reconnect when their reply
                was lost with the connection; others fail with `ConnectionLost`.
            auto_refresh: on `tokenExpiring`, send a `refresh` with a fresh token from the
                `token` callable (ignored for a plain string token).
            headers: extra HTTP headers for every request (e.g. `Origin`, `Cookie`).
            ssl: an `ssl.SSLContext`, or False to skip certificate checks (tests only).
            max_message_size: largest WebSocket message accepted.
            max_output_bytes: largest chunked output (the marker's `bytes`) reassembled;
                a larger one is refused with an `executionOutputError` event.
            rng: random generator of the backoff jitter (tests pass a seeded one).
        """
        url_list = [urls] if isinstance(urls, str) else list(urls)
        if not url_list:
            raise ValueError("at least one URL is required")
        if transport not in ("auto", "websocket", "sse"):
            raise ValueError("transport must be 'auto', 'websocket' or 'sse'")
        if command_queue_size < 0:
            raise ValueError("command_queue_size must be >= 0")
        if max_attempts is not None and max_attempts < 1:
            raise ValueError("max_attempts must be >= 1 or None")
        self._push_urls = [push_url(url, rest_prefix) for url in url_list]
        bases = zip(self._push_urls, url_list, strict=True)
        self._bases = {push: http_base(url) for push, url in bases}
        self._token_source = token
        self._token: str | None = None
        self._push_ref = push_ref or random_push_ref()
        self._mode: TransportMode = transport
        self._chosen: dict[str, TransportName] = {}
        self._websocket_worked: set[str] = set()
        self._backoff = Backoff(backoff_base, backoff_cap, rng)
        self._max_attempts = max_attempts
        self._queue_size = command_queue_size
        self._command_timeout = command_timeout
        self._connect_timeout = connect_timeout
        self._idempotent = frozenset(idempotent_commands)
        self._auto_refresh = auto_refresh
        self._dialer = Dialer(
            headers=headers, ssl=ssl, heartbeat=heartbeat, max_message_size=max_message_size
        )

        self._state = ConnectionState.IDLE
        self._url_index = 0
        self._failures = 0
        self._ids = itertools.count(1)
        self._queue: deque[_Outgoing] = deque()
        self._queue_ready = asyncio.Event()
        self._inflight: dict[int, _Outgoing] = {}
        self._tracker = ChannelTracker()
        self._subscribed: dict[str, None] = {}
        for channel in channels:
            self._subscribed[channel] = None
            self._tracker.track(channel)
        #: Channels the server subscribed the connection to (`executionStream`).
        self._followed: dict[str, None] = {}
        #: Collaboration rooms the client is in (workflow id -> its tab state), joined
        #: again on every reconnect.
        self._rooms: dict[str, dict[str, Any] | None] = {}
        self._outputs: OutputAssembler[Callable[[], None]] = OutputAssembler(max_output_bytes)
        self._released: deque[Callable[[], None] | Assembly] = deque()
        self._releasing = False
        self._own: tuple[str, ...] = ()
        self._user_id: str | None = None
        self._connection: Connection | None = None
        self._connected_once: asyncio.Future[None] | None = None
        self._connected_event = asyncio.Event()
        self._closed_event = asyncio.Event()
        self._close_error: ClientError | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._dispatcher: asyncio.Task[None] | None = None
        self._events: asyncio.Queue[tuple[str, tuple[Any, ...]] | None] = asyncio.Queue()
        self._room = asyncio.Event()
        self._room.set()
        self._tasks: set[asyncio.Task[Any]] = set()

        self._listeners: dict[str, list[MessageCallback]] = {}
        self._channel_listeners: dict[str, list[MessageCallback]] = {}
        self._state_listeners: list[StateCallback] = []
        self._recovery_listeners: list[RecoveryCallback] = []

        self._connections = 0
        self._delivered = 0
        self._recovery_failures = 0
        self._recovered = 0
        self._resent = 0
        self._outputs_reassembled = 0
        self._output_errors = 0

    # -- properties ------------------------------------------------------------------------

    @property
    def state(self) -> ConnectionState:
        """The current state."""
        return self._state

    @property
    def push_ref(self) -> str:
        """The pushRef this client connects with."""
        return self._push_ref

    @property
    def user_id(self) -> str | None:
        """The user id the server reported in the last `connected` message."""
        return self._user_id

    @property
    def transport(self) -> TransportName | None:
        """The transport of the current connection (None while not connected)."""
        return self._connection.transport if self._connection is not None else None

    @property
    def url(self) -> str:
        """The push URL currently used (or tried next)."""
        return self._push_urls[self._url_index]

    @property
    def channels(self) -> list[str]:
        """The explicitly subscribed channels (the connection's own `push:`, `user:` and
        `system` channels are implied)."""
        return list(self._subscribed)

    @property
    def followed(self) -> list[str]:
        """The channels the server subscribed the connection to by itself (`execution:`
        channels announced by `executionStream`), until their `unsubscribed`."""
        return list(self._followed)

    @property
    def positions(self) -> dict[str, Position]:
        """The position of every channel a reconnect resumes from: the last delivered
        publication, or just before an output still being reassembled."""
        return self._resume_positions()

    @property
    def sse_retry_ms(self) -> int | None:
        """The `retry:` the server suggested on the current SSE stream, if any. Informational:
        reconnection delays follow the client's own backoff."""
        connection = self._connection
        return connection.retry_ms if isinstance(connection, SseConnection) else None

    @property
    def stats(self) -> ClientStats:
        """Counters since the client was created."""
        return ClientStats(
            connections=self._connections,
            delivered=self._delivered,
            duplicates_dropped=self._tracker.duplicates,
            recovered=self._recovered,
            recovery_failures=self._recovery_failures,
            commands_resent=self._resent,
            outputs_reassembled=self._outputs_reassembled,
            output_errors=self._output_errors,
        )

    @property
    def closed(self) -> bool:
        """True once the client is closed for good."""
        return self._state is ConnectionState.CLOSED

    @property
    def close_error(self) -> ClientError | None:
        """Why the client closed, when it was not `close()`: `ConnectionRefused` (a permanent
        refusal, or the close code 4009/4003 in `close_code`), `ConnectionFailed`."""
        error = self._close_error
        return None if isinstance(error, ClientClosed) else error

    def _closed_exception(self) -> ClientClosed:
        error = self._close_error
        if error is None or isinstance(error, ClientClosed):
            return ClientClosed("the client is closed")
        closed = ClientClosed(f"the client is closed: {error}")
        closed.__cause__ = error
        return closed

    # -- lifecycle -------------------------------------------------------------------------

    async def connect(self) -> None:
        """Start the client and wait for the first `connected` message.

        Transient failures (refused TCP connection, 5xx, 429, timeouts) are retried with
        backoff across the URLs; raises `ConnectionRefused` on a permanent refusal (HTTP
        400/401/403/409, with the server's `code`), `ConnectionFailed` after `max_attempts`,
        `ClientClosed` if the client is closed meanwhile. Cancelling this call does not stop
        the client: call `close()`. Returns at once if already connected."""
        if self._state is ConnectionState.CLOSED:
            raise self._closed_exception()
        if self._supervisor is None:
            loop = asyncio.get_running_loop()
            self._connected_once = loop.create_future()
            self._connected_once.add_done_callback(_retrieve)
            self._dispatcher = loop.create_task(self._dispatch_loop(), name="livepush-dispatch")
            self._supervisor = loop.create_task(self._run(), name="livepush-client")
        assert self._connected_once is not None
        await asyncio.shield(self._connected_once)

    async def wait_connected(self) -> None:
        """Wait until the client is connected (returns at once if it is); raises
        `ClientClosed` (or the error that closed it) if it closes first."""
        while self._state is not ConnectionState.CONNECTED:
            if self._state is ConnectionState.CLOSED:
                raise self._closed_exception()
            connected = asyncio.ensure_future(self._connected_event.wait())
            closed = asyncio.ensure_future(self._closed_event.wait())
            try:
                await asyncio.wait({connected, closed}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                connected.cancel()
                closed.cancel()

    async def wait_closed(self) -> None:
        """Wait until the client is closed (by `close()` or for good by the server)."""
        await self._closed_event.wait()

    async def close(self) -> None:
        """Close the connection and stop reconnecting. Commands still waiting fail with
        `ClientClosed`; listeners get the `closed` state, then no more calls. Idempotent."""
        if self._state is not ConnectionState.CLOSED:
            supervisor = self._supervisor
            if supervisor is not None and supervisor is not asyncio.current_task():
                supervisor.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await supervisor
            if not self.closed:  # the supervisor may have closed it meanwhile
                self._shut(
                    ClientClosed("closed by the client"),
                    self._change(ConnectionState.CLOSED, reason="closed by the client"),
                )
        await self._finish_tasks()

    async def __aenter__(self) -> Client:
        await self.connect()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # -- listeners -------------------------------------------------------------------------

    def on(self, message_type: str, callback: MessageCallback) -> Unsubscribe:
        """Call `callback(message)` for every message of this type: publications (after
        de-duplication) and server messages (`connected`, `tokenExpiring`, `channelReset`,
        `unsubscribed`, `disconnect`, `error` without a command id). `"*"` matches every
        type. Returns a function that removes the listener."""
        return _add(self._listeners.setdefault(message_type, []), callback)

    def on_channel(self, channel: str, callback: MessageCallback) -> Unsubscribe:
        """Call `callback(message)` for every publication of `channel`, in offset order,
        each exactly once. Returns a function that removes the listener."""
        return _add(self._channel_listeners.setdefault(channel, []), callback)

    def on_state(self, callback: StateCallback) -> Unsubscribe:
        """Call `callback(change)` on every state transition (`StateChange`). Returns a
        function that removes the listener."""
        return _add(self._state_listeners, callback)

    def on_recovery_failed(self, callback: RecoveryCallback) -> Unsubscribe:
        """Call `callback(channel, position)` when a channel's continuity is lost: a resume
        answered `recovered: false`, the server sent `channelReset`, or a publication came
        with another epoch (or skipped offsets). The channel continues after `position`;
        refetch the state it describes. Returns a function that removes the listener."""
        return _add(self._recovery_listeners, callback)

    # -- commands --------------------------------------------------------------------------

    async def subscribe(self, channel: str) -> dict[str, Any]:
        """Subscribe to a channel; returns the reply data (`channel`, `epoch`, `offset`,
        maybe `alreadySubscribed`). Raises `CommandError` (`forbidden`, `invalid_channel`,
        `too_many_subscriptions`, ...). The subscription is restored on every reconnect."""
        self._tracker.track(channel)
        try:
            return await self.command("subscribe", channel=channel)
        except BaseException:
            if not self._kept(channel):
                self._tracker.forget(channel)
            raise

    async def unsubscribe(self, channel: str) -> dict[str, Any]:
        """Leave a channel; returns the reply data. A `not_subscribed` error is raised too,
        but the client forgets the channel either way."""
        return await self.command("unsubscribe", channel=channel)

    async def ping(self) -> None:
        """A round trip to the server."""
        await self.command("ping")

    # -- collaboration ---------------------------------------------------------------------

    @property
    def rooms(self) -> list[str]:
        """The workflows this client has open (it rejoins their rooms on every reconnect)."""
        return list(self._rooms)

    async def open_workflow(
        self, workflow_id: str, state: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        """n8n's `workflowOpened`: subscribe to `workflow:<id>` and join its collaboration
        room (with the tab's first `state`); returns the subscribe reply data. Members get
        `collaboratorsChanged` (listen with `on("collaboratorsChanged", ...)`) and the room's
        `collabEphemeral` batches. The room is joined again after each reconnect."""
        fields: dict[str, Any] = {"workflowId": workflow_id}
        if state is not None:
            fields["state"] = dict(state)
        self._tracker.track(f"workflow:{workflow_id}")
        try:
            reply = await self.command("workflowOpened", **fields)
        except BaseException:
            if not self._kept(f"workflow:{workflow_id}"):
                self._tracker.forget(f"workflow:{workflow_id}")
            raise
        self._rooms[workflow_id] = None if state is None else dict(state)
        return reply

    async def close_workflow(self, workflow_id: str) -> None:
        """n8n's `workflowClosed`: leave the room (the tab's locks there go with it) and
        the workflow's channel."""
        self._rooms.pop(workflow_id, None)
        await self.command("workflowClosed", workflowId=workflow_id)

    async def update_presence(self, workflow_id: str, state: Mapping[str, Any]) -> None:
        """Show the other collaborators this tab's state (selected node, panel, status)."""
        await self.command("presenceUpdate", workflowId=workflow_id, state=dict(state))
        if workflow_id in self._rooms:
            self._rooms[workflow_id] = dict(state)

    def send_ephemeral(self, workflow_id: str, kind: str, data: Any) -> None:
        """A cursor position, selection, viewport... (`kind`) for the room's other members;
        unanswered, coalesced by the server to the latest per kind per tick. Not queued
        while disconnected (a cursor position is stale by the time the client reconnects)."""
        if self._state is ConnectionState.CONNECTED:
            self.send("ephemeral", workflowId=workflow_id, kind=kind, data=data)

    async def request_write_access(
        self, workflow_id: str, *, force: bool = False
    ) -> dict[str, Any]:
        """Take the workflow's write lock for this tab; returns `fencingToken` and `ttl`.
        The server keeps it while the connection lives and the tab confirms it at least every
        `lock_idle_ttl` (`write_access_heartbeat`), and releases it with the connection
        (after a reconnect, request it again: the token changes). Raises `CommandError`
        `lock_held` / `forbidden`."""
        return await self.command("writeAccessRequested", workflowId=workflow_id, force=force)

    async def write_access_heartbeat(self, workflow_id: str) -> None:
        """Confirm the write lock (n8n's editor does every 30 s while the user is active):
        the server releases a lock not confirmed for `lock_idle_ttl` (120 s), even while the
        connection lives. `CommandError` `lock_not_held` once it is gone."""
        await self.command("writeAccessHeartbeat", workflowId=workflow_id)

    async def release_write_access(self, workflow_id: str) -> None:
        """Let go of the workflow's write lock (`lock_not_held` if this tab has not got it)."""
        await self.command("writeAccessReleaseRequested", workflowId=workflow_id)

    async def lock_node(
        self, workflow_id: str, node_id: str, *, force: bool = False
    ) -> dict[str, Any]:
        """Lock one node of the canvas for this tab; returns `fencingToken` and `ttl`. Asking
        again confirms it (same token): unconfirmed for `lock_idle_ttl`, it is released."""
        return await self.command(
            "nodeLockRequested", workflowId=workflow_id, nodeId=node_id, force=force
        )

    async def unlock_node(self, workflow_id: str, node_id: str) -> None:
        """Let go of a node lock."""
        await self.command("nodeLockReleased", workflowId=workflow_id, nodeId=node_id)

    async def execution_snapshot(self, execution_id: str) -> dict[str, Any]:
        """Catch up with an execution: send `executionSnapshot` and return the reply data
        (`executionId`, `channel`, `epoch`, `offset`, `snapshot`: the execution's state after
        the event at `offset`).

        The connection is then subscribed to the execution's channel (`execution:<id>`): the
        client tracks it from `(epoch, offset)`, drops any publication of it at or before
        `offset` arriving afterwards (it is in the snapshot), and resumes it on reconnect like
        any subscription. Raises `CommandError` (`execution_not_found`, `forbidden`, ...)."""
        channel = f"execution:{execution_id}"
        self._tracker.track(channel)
        try:
            return await self.command("executionSnapshot", executionId=execution_id)
        except BaseException:
            if not self._kept(channel):
                self._tracker.forget(channel)
            raise

    async def fetch_output(self, output: Message | Mapping[str, Any] | str) -> Any:
        """Download a node output stored on the server and return its decoded JSON.

        `output` is an `executionOutput` message (`delivery: "reference"`, or any marker),
        an `executionOutputError` event, its `data`, or the `url` itself. A relative url is
        taken relative to the base URL of the server the client is connected to (or will
        connect to next); an absolute one must be on one of the client's servers (the token
        is sent along). The request carries `Authorization: Bearer <the current token>` and
        the client's extra headers.

        Raises `OutputFetchError` with the HTTP `status` and the server's error `code`
        (`output_not_found` once expired, `forbidden`, ...), or `status` None when the
        request failed on the network. Connecting may take `connect_timeout`; the transfer
        itself is not bounded (an output may be large): wrap the call in `asyncio.timeout`
        to bound it. `ValueError` if there is no url, or it is on another server."""
        url = self._output_url(output)
        token = self._token if self._token is not None else await self._token_value()
        try:
            return await self._dialer.get_json(url, token, self._connect_timeout)
        except RequestFailed as exc:
            raise OutputFetchError(str(exc), status=exc.status, code=exc.code, url=url) from exc

    def _output_url(self, output: Message | Mapping[str, Any] | str) -> str:
        if isinstance(output, Message):
            output = output.data if isinstance(output.data, Mapping) else {}
        if isinstance(output, Mapping):
            if not isinstance(output.get("url"), str) and isinstance(output.get("data"), Mapping):
                output = output["data"]  # a raw message
            url = output.get("url") if isinstance(output, Mapping) else None
            if not isinstance(url, str):
                nested = output.get("output") if isinstance(output, Mapping) else None
                url = nested.get("url") if isinstance(nested, Mapping) else None
            if not isinstance(url, str):
                raise ValueError("no output url in the given message")
            output = url
        connection = self._connection
        push = connection.url if connection is not None else self.url
        base = self._bases.get(push, next(iter(self._bases.values())))
        parts = urlsplit(output)
        if parts.scheme or parts.netloc:
            absolute = output if parts.scheme else f"{urlsplit(base).scheme}:{output}"
            origin = _origin(absolute)
            if origin not in {_origin(b) for b in self._bases.values()}:
                raise ValueError(
                    f"refusing to send the token to {output}: not one of the client's servers"
                )
            return absolute
        return f"{base}{output}" if output.startswith("/") else f"{base}/{output}"

    async def command(self, command_type: str, /, **fields: Any) -> dict[str, Any]:
        """Send a command with a fresh `id` and return its reply's `data`.

        Raises `CommandError` (the server's `code`), `CommandTimeout` after
        `command_timeout` seconds (queue time included), `QueueFull` when disconnected with
        `command_queue_size` commands already waiting, `ConnectionLost` when the connection
        dropped after a non-idempotent command was sent, `ClientClosed`."""
        if command_type == "heartbeat":
            raise ValueError("heartbeat is never answered: use send()")
        loop = asyncio.get_running_loop()
        body = {"type": command_type, "id": next(self._ids), **fields}
        future: asyncio.Future[dict[str, Any]] = loop.create_future()
        item = _Outgoing(body, future, command_type in self._idempotent)
        self._enqueue(item)
        try:
            async with asyncio.timeout(self._command_timeout):
                return await future
        except TimeoutError:
            raise CommandTimeout(
                f"{command_type}: no reply within {self._command_timeout} s"
            ) from None
        finally:
            self._discard(item)

    def send(self, message_type: str, /, **fields: Any) -> None:
        """Send a message that gets no reply (e.g. n8n's `heartbeat`), in order with the
        commands. It waits in the queue while disconnected (`QueueFull` when full) and is
        dropped if the connection breaks before it is written."""
        self._enqueue(_Outgoing({"type": message_type, **fields}, None, False))

    # -- queue -----------------------------------------------------------------------------

    def _enqueue(self, item: _Outgoing) -> None:
        if self._state is ConnectionState.CLOSED:
            raise self._closed_exception()
        if self._state is not ConnectionState.CONNECTED and len(self._queue) >= self._queue_size:
            raise QueueFull(
                f"{len(self._queue)} commands already wait for the connection "
                f"(command_queue_size={self._queue_size})"
            )
        self._queue.append(item)
        self._queue_ready.set()

    def _discard(self, item: _Outgoing) -> None:
        """Forget a command that completed, timed out or was cancelled."""
        item_id = item.id
        if item_id is not None and self._inflight.get(item_id) is item:
            del self._inflight[item_id]
        with contextlib.suppress(ValueError):
            self._queue.remove(item)

    def _take_batch(self, limit: int) -> list[_Outgoing]:
        batch: list[_Outgoing] = []
        while self._queue and len(batch) < limit:
            item = self._queue.popleft()
            if item.future is not None and item.future.done():
                continue
            batch.append(item)
        if not self._queue:
            self._queue_ready.clear()
        return batch

    def _requeue_inflight(self) -> None:
        """The connection is gone: idempotent commands in flight go back to the front of the
        queue (in their order); the others fail with `ConnectionLost`."""
        pending = list(self._inflight.values())
        self._inflight.clear()
        resend: list[_Outgoing] = []
        for item in pending:
            if item.future is None or item.future.done():
                continue
            if item.idempotent:
                resend.append(item)
            else:
                item.future.set_exception(
                    ConnectionLost(
                        f"{item.type}: the connection dropped before its reply; not re-sent "
                        "(not idempotent)"
                    )
                )
        self._resent += len(resend)
        self._queue.extendleft(reversed(resend))
        if self._queue:
            self._queue_ready.set()

    def _fail_all(self, error: ClientError) -> None:
        items = [*self._inflight.values(), *self._queue]
        self._inflight.clear()
        self._queue.clear()
        for item in items:
            if item.future is not None and not item.future.done():
                item.future.set_exception(error)

    # -- the supervisor --------------------------------------------------------------------

    async def _run(self) -> None:
        try:
            await self._supervise()
        except _Stop as stop:
            self._shut(stop.error, stop.change)
            await self._dialer.close()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # pragma: no cover - a bug; close rather than hang
            log.exception("livepush client supervisor failed")
            error = ClientClosed(f"internal error: {exc!r}")
            self._shut(error, self._change(ConnectionState.CLOSED, reason=str(error), error=exc))
            await self._dialer.close()

    async def _supervise(self) -> None:
        while True:
            url = self._push_urls[self._url_index]
            self._set_state(
                self._change(ConnectionState.CONNECTING, url=url, attempt=self._failures)
            )
            failure: BaseException | None = None
            ended: _Ended | None = None
            try:
                connection = await self._open(url)
            except HandshakeFailed as exc:
                if exc.status in PERMANENT_STATUSES:
                    refused = ConnectionRefused(
                        str(exc), status=exc.status, code=exc.code, close_code=None
                    )
                    raise _Stop(
                        refused,
                        self._change(
                            ConnectionState.CLOSED,
                            reason=str(exc),
                            status=exc.status,
                            error_code=exc.code,
                            error=refused,
                            url=url,
                            transport=exc.transport,
                        ),
                    ) from exc
                failure = exc
            except Exception as exc:  # network errors, timeouts, a failing token callable
                if not _is_network_error(exc):
                    log.warning("livepush: connection attempt to %s failed: %r", url, exc)
                failure = exc
            else:
                ended = await self._serve(connection)
                if ended.code in NO_RECONNECT_CODES and ended.connected:
                    what = "replaced" if ended.code == 4009 else "forbidden"
                    reason = ended.reason or what
                    refused = ConnectionRefused(
                        f"connection closed with {ended.code} ({reason}); not reconnecting",
                        close_code=ended.code,
                        code=what,
                    )
                    raise _Stop(
                        refused,
                        self._change(
                            ConnectionState.CLOSED,
                            reason=reason,
                            code=ended.code,
                            error=refused,
                            url=url,
                            transport=connection.transport,
                        ),
                    )
                if ended.connected:
                    self._set_state(
                        self._change(
                            ConnectionState.DISCONNECTED,
                            reason=ended.reason,
                            code=ended.code,
                            error=ended.error,
                            url=url,
                            transport=connection.transport,
                        )
                    )
                else:
                    failure = ended.error or ConnectionError(ended.reason or "closed")
            self._url_index = (self._url_index + 1) % len(self._push_urls)
            if failure is not None:
                self._failures += 1
                log.debug("livepush: attempt to %s failed: %r", url, failure)
                if self._max_attempts is not None and self._failures >= self._max_attempts:
                    error = ConnectionFailed(
                        f"{self._failures} consecutive connection attempts failed; last: "
                        f"{failure!r}"
                    )
                    raise _Stop(
                        error,
                        self._change(
                            ConnectionState.CLOSED,
                            reason=str(error),
                            error=error,
                            attempt=self._failures,
                        ),
                    )
            elif ended is not None and ended.code == _RATE_LIMITED_CLOSE:
                self._backoff.attempt = max(self._backoff.attempt, 4)
            delay = self._backoff.next_delay()
            self._set_state(
                self._change(
                    ConnectionState.RECONNECTING,
                    reason=repr(failure) if failure is not None else None,
                    error=failure,
                    attempt=self._failures,
                    delay=delay,
                    url=self._push_urls[self._url_index],
                    status=failure.status if isinstance(failure, HandshakeFailed) else None,
                    error_code=failure.code if isinstance(failure, HandshakeFailed) else None,
                )
            )
            if delay > 0:
                await asyncio.sleep(delay)

    async def _token_value(self) -> str:
        source = self._token_source
        if isinstance(source, str):
            return source
        value = source()
        if inspect.isawaitable(value):
            value = await value
        if not isinstance(value, str):
            raise TypeError("the token callable must return a string")
        return value

    def _handshake_params(self) -> dict[str, str]:
        params = {"pushRef": self._push_ref}
        channels = [*self._subscribed, *(c for c in self._followed if c not in self._subscribed)]
        if channels:
            params["channels"] = ",".join(channels)
        positions = self._resume_positions()
        if positions:
            params["lastEventId"] = format_positions(positions)
        return params

    def _resumable(self) -> list[str]:
        explicit = [c for c in self._subscribed if c not in self._own]
        followed = [c for c in self._followed if c not in self._own and c not in self._subscribed]
        return [*self._own, *explicit, *followed]

    def _resume_positions(self) -> dict[str, Position]:
        """Resume positions: the tracked ones, but never past an output still being
        reassembled (a reconnect must get its marker and chunks again)."""
        positions = self._tracker.known(self._resumable())
        for channel, pin in self._outputs.pins().items():
            if channel in positions:
                positions[channel] = pin
        return positions

    async def _open(self, url: str) -> Connection:
        """One attempt: WebSocket or SSE as configured (auto: WebSocket, then SSE for a URL
        whose WebSocket handshake is refused and that never had a WebSocket)."""
        async with asyncio.timeout(self._connect_timeout):
            token = await self._token_value()
            self._token = token
            return await self._dial(url, self._handshake_params(), token)

    async def _dial(self, url: str, params: dict[str, str], token: str) -> Connection:
        mode = self._mode if self._mode != "auto" else self._chosen.get(url, "websocket")
        if mode == "sse":
            connection: Connection = await self._dialer.open_sse(url, params, token)
            return connection
        try:
            connection = await self._dialer.open_websocket(url, params, token)
        except HandshakeFailed as exc:
            if self._mode != "auto" or url in self._websocket_worked:
                raise
            log.info("livepush: WebSocket refused by %s (%s); trying SSE", url, exc)
            connection = await self._dialer.open_sse(url, params, token)
            self._chosen[url] = "sse"
            return connection
        self._websocket_worked.add(url)
        self._chosen[url] = "websocket"
        return connection

    async def _serve(self, connection: Connection) -> _Ended:
        """Run one connection until it ends."""
        self._connection = connection
        connected = False
        error: BaseException | None = None
        sender: asyncio.Task[None] | None = None
        try:
            async with asyncio.timeout(self._connect_timeout):
                frame = await connection.receive()
            if frame is None:
                return _Ended(False, connection.close_code, connection.close_reason)
            message = frame.message
            if message is None or message.get("type") != "connected":
                error = ConnectionError(f"expected a connected message first, got {frame!r}")
                return _Ended(False, connection.close_code, str(error), error)
            self._on_connected(connection, message)
            connected = True
            sender = asyncio.get_running_loop().create_task(self._send_loop(connection))
            while True:
                frame = await connection.receive()
                if frame is None:
                    break
                await self._handle(connection, frame)
        except Exception as exc:
            if not _is_network_error(exc):
                raise
            error = exc
            connection.note_close(ABNORMAL_CLOSURE, repr(exc))
        finally:
            self._connection = None
            self._connected_event.clear()
            self._discard_outputs()
            if sender is not None:
                sender.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await sender
            await connection.close()
            self._requeue_inflight()
        return _Ended(connected, connection.close_code, connection.close_reason, error)

    async def _send_loop(self, connection: Connection) -> None:
        """Write queued messages in order while the connection lasts."""
        while True:
            await self._queue_ready.wait()
            batch = self._take_batch(connection.max_batch)
            if not batch:
                continue
            for item in batch:
                if item.id is not None:
                    self._inflight[item.id] = item
            try:
                if isinstance(connection, SseConnection):
                    connection.post_timeout = self._command_timeout
                    replies = await connection.send([item.body for item in batch])
                    self._on_post_replies(batch, replies or [])
                else:
                    for index, item in enumerate(batch):
                        if item.future is not None and item.future.done():
                            continue  # timed out or cancelled meanwhile
                        try:
                            await connection.send([item.body])
                        except BaseException:
                            self._unsend(batch[index + 1 :])
                            raise
            except asyncio.CancelledError:
                raise
            except PostFailed as exc:
                if exc.status in (400, 413) and exc.code is not None:
                    # The whole request was refused (nothing ran): fail its commands.
                    for item in batch:
                        self._fail(item, CommandError(exc.code, exc.message, item.type))
                    continue
                connection.note_close(ABNORMAL_CLOSURE, f"command POST failed: {exc}")
                await connection.close()
                return
            except Exception as exc:
                connection.note_close(ABNORMAL_CLOSURE, f"send failed: {exc!r}")
                await connection.close()
                return

    def _unsend(self, items: list[_Outgoing]) -> None:
        """Items taken for sending but not written: back to the front of the queue."""
        for item in items:
            if item.id is not None:
                self._inflight.pop(item.id, None)
        self._queue.extendleft(reversed(items))
        if self._queue:
            self._queue_ready.set()

    def _fail(self, item: _Outgoing, error: ClientError) -> None:
        if item.id is not None:
            self._inflight.pop(item.id, None)
        if item.future is not None and not item.future.done():
            item.future.set_exception(error)

    def _on_post_replies(self, batch: list[_Outgoing], replies: list[dict[str, Any]]) -> None:
        """Replies of an SSE POST, in order. The server answers an over-the-rate command with
        an `error` without id: when every command of the batch had an id and there are as
        many answers as commands, answers are matched by position."""
        by_position = len(replies) == len(batch) and all(item.id is not None for item in batch)
        for index, reply in enumerate(replies):
            if reply.get("id") is None and by_position and reply.get("type") == "error":
                reply = {**reply, "id": batch[index].id}
            self._handle_message_sync(reply)

    # -- incoming --------------------------------------------------------------------------

    def _on_connected(self, connection: Connection, message: dict[str, Any]) -> None:
        data = message.get("data")
        if not isinstance(data, dict):
            data = {}
        self._user_id = data.get("userId") if isinstance(data.get("userId"), str) else None
        push_ref = data.get("pushRef") if isinstance(data.get("pushRef"), str) else None
        own = ["system"]
        if push_ref:
            own.insert(0, f"push:{push_ref}")
        if self._user_id:
            own.insert(1, f"user:{self._user_id}")
        self._own = tuple(own)
        for channel in self._own:
            self._tracker.track(channel)
        ping_interval = data.get("pingInterval")
        if isinstance(ping_interval, int | float) and ping_interval > 0:
            connection.set_idle_timeout(max(2.5 * float(ping_interval), 10.0))
        failed: list[tuple[str, Position]] = []
        entries = data.get("channels")
        for entry in entries if isinstance(entries, list) else []:
            if not isinstance(entry, dict) or not isinstance(entry.get("channel"), str):
                continue
            channel = entry["channel"]
            if channel not in self._own and channel not in self._followed:
                self._subscribed[channel] = None
            self._tracker.track(channel)
            position = _position_of(entry)
            if position is None:
                continue
            recovered = entry.get("recovered")
            if recovered is True and self._tracker.get(channel) is not None:
                missed = entry.get("missed")
                self._recovered += missed if isinstance(missed, int) else 0
                continue  # the missed publications follow, after our position
            self._tracker.set(channel, position)
            if recovered is False:
                failed.append((channel, position))
        refused = data.get("refused")
        for entry in refused if isinstance(refused, list) else []:
            if isinstance(entry, dict) and isinstance(entry.get("channel"), str):
                channel = entry["channel"]
                log.warning(
                    "livepush: subscription to %s refused at connect: %s %s",
                    channel,
                    entry.get("code"),
                    entry.get("message"),
                )
                self._subscribed.pop(channel, None)
                self._followed.pop(channel, None)
                self._tracker.forget(channel)
        self._connections += 1
        self._failures = 0
        self._backoff.reset()
        self._set_state(
            self._change(
                ConnectionState.CONNECTED, url=connection.url, transport=connection.transport
            )
        )
        self._connected_event.set()
        if self._connected_once is not None and not self._connected_once.done():
            self._connected_once.set_result(None)
        self._emit_message(_message(message))
        for channel, position in failed:
            self._recovery_failed(channel, position)
        # rooms are presence, not history: join them again (the channel itself resumed)
        for workflow_id, state in self._rooms.items():
            room: dict[str, Any] = {"type": "workflowOpened", "workflowId": workflow_id}
            if state is not None:
                room["state"] = state
            self._queue.appendleft(_Outgoing(room, None, False))
        if self._queue:
            self._queue_ready.set()

    async def _handle(self, connection: Connection, frame: Frame) -> None:
        if frame.mark is not None:
            for channel, position in parse_positions(frame.mark).items():
                if channel in self._tracker and self._tracker.get(channel) is None:
                    self._tracker.set(channel, position)
            return
        if frame.message is not None:
            self._handle_message_sync(frame.message)
            # Back-pressure: do not read faster than the listeners consume.
            if self._events.qsize() >= _EVENTS_HIGH:
                self._room.clear()
                await self._room.wait()

    def _handle_message_sync(self, message: dict[str, Any]) -> None:
        message_type = message.get("type")
        if not isinstance(message_type, str):
            return
        request_id = message.get("id")
        if message_type in ("reply", "error") and request_id is not None:
            self._on_answer(message_type, request_id, message.get("data"))
            return
        if message_type not in SERVER_TYPES and isinstance(message.get("channel"), str):
            self._on_publication(message)
            return
        data = message.get("data")
        if message_type == "executionOutputChunk":
            chunk = data if isinstance(data, dict) else message
            self._release(self._outputs.feed(chunk))
            return  # pieces are not messages: the reassembled output is
        if message_type == "channelReset" and isinstance(data, dict):
            channel = data.get("channel")
            position = _position_of(data)
            if isinstance(channel, str) and position is not None:
                self._abandon_outputs(channel, "the server reset the channel (channelReset)")
                if channel in self._tracker:
                    self._tracker.set(channel, position)
                self._recovery_failed(channel, position)
        elif message_type == "unsubscribed" and isinstance(data, dict):
            channel = data.get("channel")
            if isinstance(channel, str):
                event = _message(message)

                def end(channel: str = channel) -> None:
                    self._forget_channel(channel)
                    self._emit_message(event)

                # after what the channel still holds (an output being reassembled)
                self._in_channel(channel, end)
                return
        elif message_type == "tokenExpiring":
            self._maybe_refresh()
        elif message_type == "connected":
            log.warning("livepush: unexpected second connected message")
        self._emit_message(_message(message))

    def _on_publication(self, message: dict[str, Any]) -> None:
        channel: str = message["channel"]
        offset = message.get("offset")
        epoch = message.get("epoch")
        if isinstance(offset, int) and isinstance(epoch, str):
            if channel in self._tracker:
                verdict = self._tracker.check(channel, epoch, offset)
                if verdict is Verdict.DUPLICATE:
                    return
                if verdict is Verdict.DISCONTINUITY:
                    lost = Position(epoch, offset - 1)
                    self._in_channel(channel, lambda: self._recovery_failed(channel, lost))
            elif self._outputs.is_open(channel, offset):
                return  # an untracked channel's marker again: already being assembled
        if message.get("type") == "executionStream":
            self._follow(message.get("data"))
        if isinstance(offset, int) and is_chunked_marker(message):
            refused = self._outputs.begin(channel, offset, epoch, message)
            if refused is not None:
                failed = self._output_error(message, *refused)
                self._in_channel(channel, lambda: self._deliver_output_error(failed))
            return
        event = _message(message)
        self._in_channel(channel, lambda: self._deliver(event))

    def _deliver(self, message: Message) -> None:
        self._delivered += 1
        self._emit_message(message)

    def _deliver_output_error(self, message: Message) -> None:
        self._output_errors += 1
        log.warning("livepush: %s: %s", message.data["code"], message.data["message"])
        self._emit_message(message)

    def _in_channel(self, channel: str, action: Callable[[], None]) -> None:
        """Run `action` now, or after the channel's outputs being reassembled."""
        if self._outputs.holding(channel):
            self._outputs.hold(channel, action)
        else:
            action()

    def _release(self, items: Iterable[Callable[[], None] | Assembly]) -> None:
        """Run, in order, what stopped waiting (finished outputs and held actions); an
        action may release more (it is queued behind, so the order holds)."""
        self._released.extend(items)
        if self._releasing:
            return
        self._releasing = True
        try:
            while self._released:
                item = self._released.popleft()
                if isinstance(item, Assembly):
                    self._finish_output(item)
                else:
                    item()
        finally:
            self._releasing = False

    def _finish_output(self, assembly: Assembly) -> None:
        if assembly.error is not None:
            self._deliver_output_error(self._output_error(assembly.marker, *assembly.error))
            return
        self._outputs_reassembled += 1
        marker = assembly.marker
        raw = {
            "type": OUTPUT_DATA_TYPE,
            "data": assembly.data,
            "channel": assembly.channel,
            "offset": assembly.offset,
            "epoch": assembly.epoch,
            "marker": marker,
        }
        self._deliver(_message(raw))

    def _output_error(self, marker: Mapping[str, Any], code: str, text: str) -> Message:
        """The event that takes the place of an output that cannot be delivered."""
        output = marker.get("data")
        output = output if isinstance(output, Mapping) else {}
        data: dict[str, Any] = {"code": code, "message": text, "output": dict(output)}
        if isinstance(output.get("url"), str):
            data["url"] = output["url"]
        raw = {
            "type": OUTPUT_ERROR_TYPE,
            "data": data,
            "channel": marker.get("channel"),
            "offset": marker.get("offset"),
            "epoch": marker.get("epoch"),
            "marker": marker,
        }
        return _message(raw)

    def _abandon_outputs(self, channel: str, why: str) -> None:
        self._release(
            self._outputs.abandon(channel, OUTPUT_ABANDONED, f"{channel}: output abandoned: {why}")
        )

    def _discard_outputs(self) -> None:
        """The connection ended: half-assembled outputs and what waited behind them are
        dropped, and their channels resume just before the marker (the server sends the
        marker, its chunks and the rest again)."""
        for channel, pin in self._outputs.discard().items():
            if channel in self._tracker:
                self._tracker.set(channel, pin)

    def _follow(self, data: Any) -> None:
        """`executionStream`: the server subscribed this connection to the execution's
        channel, from its first event; track it and resume it like a subscription."""
        if not isinstance(data, dict):
            return
        channel, epoch = data.get("channel"), data.get("epoch")
        if not isinstance(channel, str) or channel in self._own:
            return
        if channel not in self._subscribed:
            self._followed[channel] = None
        self._tracker.track(channel)
        if isinstance(epoch, str):
            self._tracker.advance(channel, Position(epoch, 0))

    def _on_answer(self, kind: str, request_id: Any, data: Any) -> None:
        item = self._inflight.pop(request_id, None) if isinstance(request_id, int) else None
        if item is None:
            log.debug("livepush: answer for unknown or expired command %r", request_id)
            return
        data = data if isinstance(data, dict) else {}
        if kind == "reply":
            self._apply_reply(item, data)
            if item.future is not None and not item.future.done():
                item.future.set_result(data)
            return
        code = str(data.get("code", "unknown"))
        self._apply_error(item, code)
        if item.future is not None and not item.future.done():
            item.future.set_exception(CommandError(code, str(data.get("message", "")), item.type))

    def _apply_reply(self, item: _Outgoing, data: dict[str, Any]) -> None:
        body = item.body
        if item.type in ("subscribe", "workflowOpened"):
            channel = data.get("channel")
            if not isinstance(channel, str):
                return
            if channel not in self._own:
                self._subscribed[channel] = None
            self._tracker.track(channel)
            position = _position_of(data)
            if position is None or data.get("alreadySubscribed"):
                return
            if data.get("recovered") is False:
                self._tracker.set(channel, position)
                self._recovery_failed(channel, position)
            elif data.get("recovered") is not True:
                self._tracker.advance(channel, position)
        elif item.type == "executionSnapshot":
            channel = data.get("channel")
            if not isinstance(channel, str):
                return
            if channel not in self._own:
                self._subscribed[channel] = None
                self._followed.pop(channel, None)
            self._tracker.track(channel)
            position = _position_of(data)
            if position is not None:
                # later publications at or before the snapshot's offset are in it: dropped
                self._tracker.advance(channel, position)
        elif item.type == "unsubscribe":
            self._forget_channel(str(body.get("channel")))
        elif item.type == "workflowClosed":
            self._forget_channel(f"workflow:{body.get('workflowId')}")
        elif item.type == "refresh" and isinstance(body.get("token"), str):
            self._token = body["token"]
            if isinstance(self._connection, SseConnection):
                self._connection.token = body["token"]

    def _apply_error(self, item: _Outgoing, code: str) -> None:
        if item.type == "unsubscribe" and code == "not_subscribed":
            self._forget_channel(str(item.body.get("channel")))
        elif item.type == "subscribe":
            channel = str(item.body.get("channel"))
            if not self._kept(channel):
                self._tracker.forget(channel)

    def _kept(self, channel: str) -> bool:
        """Whether the connection is in the channel (own, subscribed or followed)."""
        return channel in self._subscribed or channel in self._followed or channel in self._own

    def _forget_channel(self, channel: str) -> None:
        self._subscribed.pop(channel, None)
        self._followed.pop(channel, None)
        if channel not in self._own:
            self._tracker.forget(channel)
            self._abandon_outputs(channel, "unsubscribed")

    def _maybe_refresh(self) -> None:
        if not self._auto_refresh or isinstance(self._token_source, str):
            return

        async def refresh() -> None:
            try:
                token = await self._token_value()
                await self.command("refresh", token=token)
            except ClientError as exc:
                log.warning("livepush: token refresh failed: %s", exc)
            except Exception:
                log.exception("livepush: token refresh failed")

        self._spawn(refresh())

    # -- events ----------------------------------------------------------------------------

    def _change(self, state: ConnectionState, **details: Any) -> StateChange:
        return StateChange(state=state, previous=self._state, **details)

    def _set_state(self, change: StateChange) -> None:
        self._state = change.state
        self._events.put_nowait(("state", (change,)))

    def _recovery_failed(self, channel: str, position: Position) -> None:
        self._recovery_failures += 1
        log.info("livepush: %s lost continuity; continuing after %s", channel, position)
        self._events.put_nowait(("recovery", (channel, position)))

    def _emit_message(self, message: Message) -> None:
        self._events.put_nowait(("message", (message,)))

    async def _dispatch_loop(self) -> None:
        while True:
            event = await self._events.get()
            if self._events.qsize() <= _EVENTS_LOW:
                self._room.set()
            if event is None:
                self._room.set()
                return
            kind, args = event
            if kind == "state":
                callbacks: list[Callable[..., Any]] = list(self._state_listeners)
            elif kind == "recovery":
                callbacks = list(self._recovery_listeners)
            else:
                message: Message = args[0]
                callbacks = [
                    *self._listeners.get(message.type, ()),
                    *self._listeners.get("*", ()),
                ]
                if message.channel is not None and message.type not in SERVER_TYPES:
                    callbacks.extend(self._channel_listeners.get(message.channel, ()))
            for callback in callbacks:
                try:
                    result = callback(*args)
                    if inspect.isawaitable(result):
                        await result
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("livepush: listener %r failed", callback)

    def _shut(self, error: ClientError, change: StateChange) -> None:
        """Close for good: fail what waits, tell the listeners, stop the dispatcher."""
        if self._state is ConnectionState.CLOSED:
            return
        self._close_error = error
        self._fail_all(self._closed_exception())
        self._set_state(change)
        self._connected_event.clear()
        self._closed_event.set()
        if self._connected_once is not None and not self._connected_once.done():
            self._connected_once.set_exception(error)
        self._events.put_nowait(None)

    async def _finish_tasks(self) -> None:
        current = asyncio.current_task()
        dispatcher = self._dispatcher
        if dispatcher is not None and dispatcher is not current:
            try:
                async with asyncio.timeout(5.0):
                    await asyncio.shield(dispatcher)
            except TimeoutError:
                dispatcher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await dispatcher
        for task in list(self._tasks):
            if task is not current:
                task.cancel()
        await self._dialer.close()

    def _spawn(self, coroutine: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def _add(listeners: list[Any], callback: Any) -> Unsubscribe:
    listeners.append(callback)

    def remove() -> None:
        with contextlib.suppress(ValueError):
            listeners.remove(callback)

    return remove


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    port = parts.port or {"http": 80, "https": 443}.get(scheme)
    return (scheme, (parts.hostname or "").lower(), port)


def _position_of(data: Mapping[str, Any]) -> Position | None:
    epoch, offset = data.get("epoch"), data.get("offset")
    if isinstance(epoch, str) and isinstance(offset, int) and not isinstance(offset, bool):
        return Position(epoch, offset)
    return None


def _message(raw: dict[str, Any]) -> Message:
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


def _retrieve(future: asyncio.Future[None]) -> None:
    """Mark a future's exception as retrieved (nobody may be waiting for it)."""
    if not future.cancelled():
        future.exception()


def _is_network_error(exc: BaseException) -> bool:
    return isinstance(exc, aiohttp.ClientError | OSError | TimeoutError | HandshakeFailed)
