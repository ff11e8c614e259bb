"""The livepush client: one logical connection that survives network failures.

One supervisor task per client connects, serves the connection (reading in order, while a
sender task writes queued commands), and on any failure reconnects with jittered exponential
backoff to the next URL, resuming every channel from the last delivered position. Listeners
run in a dispatcher task, in the order the events happened, so a listener may itself await a
command without blocking the reading of its reply.

The parts it is made of: `Channels` (which channels, and where each stands), `CommandQueue`
(what waits to be sent, and for its reply), `Inbound` (what the server sends, routed),
`Listeners` (the application's callbacks, and the task that calls them), `Rooms` (the
collaboration rooms to join again).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import random
import secrets
import ssl as ssl_module
import string
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Final, TypeAlias

import aiohttp

from livepush.client.backoff import Backoff
from livepush.client.channels import Channels
from livepush.client.collab import Rooms, output_url
from livepush.client.errors import (
    ClientClosed,
    ClientError,
    CommandTimeout,
    ConnectionFailed,
    ConnectionRefused,
    OutputFetchError,
)
from livepush.client.inbound import Inbound
from livepush.client.listeners import Listeners
from livepush.client.messages import (
    ClientStats,
    ConnectionState,
    Message,
    MessageCallback,
    RecoveryCallback,
    StateCallback,
    StateChange,
    Unsubscribe,
    to_message,
)
from livepush.client.outputs import DEFAULT_MAX_OUTPUT_BYTES
from livepush.client.positions import Position
from livepush.client.queue import DEFAULT_IDEMPOTENT, CommandQueue, Outgoing
from livepush.client.transports import (
    Connection,
    Dialer,
    HandshakeFailed,
    RequestFailed,
    SseConnection,
    TransportMode,
    TransportName,
    http_base,
    push_url,
)
from livepush.protocol.errors import CloseCode
from livepush.protocol.resume import format_positions

log = logging.getLogger(__name__)

#: A token, or a function (sync or async) that returns a fresh one; called on every connect.
TokenSource: TypeAlias = str | Callable[[], str | Awaitable[str]]

#: Close codes after which the client does not reconnect.
NO_RECONNECT_CODES: Final = frozenset({CloseCode.FORBIDDEN, CloseCode.REPLACED})
#: HTTP statuses of a refused handshake that retrying cannot fix.
PERMANENT_STATUSES: Final = frozenset({400, 401, 403, 409})
_PUSH_REF_ALPHABET: Final = string.ascii_lowercase + string.digits


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
        self._backoff = Backoff(backoff_base, backoff_cap, rng)
        self._max_attempts = max_attempts
        self._command_timeout = command_timeout
        self._connect_timeout = connect_timeout
        self._auto_refresh = auto_refresh
        self._dialer = Dialer(
            mode=transport,
            headers=headers,
            ssl=ssl,
            heartbeat=heartbeat,
            max_message_size=max_message_size,
        )

        self._state = ConnectionState.IDLE
        self._url_index = 0
        self._failures = 0
        self._connections = 0
        self._user_id: str | None = None
        self._connection: Connection | None = None
        self._connected_once: asyncio.Future[None] | None = None
        self._connected_event = asyncio.Event()
        self._closed_event = asyncio.Event()
        self._close_error: ClientError | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._dispatcher: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

        self._channels = Channels(channels)
        self._queue = CommandQueue(command_queue_size, idempotent_commands)
        self._listeners = Listeners()
        self._rooms = Rooms()
        self._inbound = Inbound(
            self._channels,
            self._queue,
            self._listeners,
            max_output_bytes=max_output_bytes,
            on_token=self._token_refreshed,
            on_token_expiring=self._maybe_refresh,
        )

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
        return list(self._channels.subscribed)

    @property
    def followed(self) -> list[str]:
        """The channels the server subscribed the connection to by itself (`execution:`
        channels announced by `executionStream`), until their `unsubscribed`."""
        return list(self._channels.followed)

    @property
    def positions(self) -> dict[str, Position]:
        """The position of every channel a reconnect resumes from: the last delivered
        publication, or just before an output still being reassembled."""
        return self._channels.resume_positions(self._inbound.outputs.pins())

    @property
    def sse_retry_ms(self) -> int | None:
        """The `retry:` the server suggested on the current SSE stream, if any. Informational:
        reconnection delays follow the client's own backoff."""
        connection = self._connection
        return connection.retry_ms if isinstance(connection, SseConnection) else None

    @property
    def stats(self) -> ClientStats:
        """Counters since the client was created."""
        inbound = self._inbound
        return ClientStats(
            connections=self._connections,
            delivered=inbound.delivered,
            duplicates_dropped=self._channels.tracker.duplicates,
            recovered=inbound.recovered,
            recovery_failures=inbound.recovery_failures,
            commands_resent=self._queue.resent,
            outputs_reassembled=inbound.outputs_reassembled,
            output_errors=inbound.output_errors,
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
            self._dispatcher = loop.create_task(self._listeners.run(), name="livepush-dispatch")
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
        return self._listeners.on(message_type, callback)

    def on_channel(self, channel: str, callback: MessageCallback) -> Unsubscribe:
        """Call `callback(message)` for every publication of `channel`, in offset order,
        each exactly once. Returns a function that removes the listener."""
        return self._listeners.on_channel(channel, callback)

    def on_state(self, callback: StateCallback) -> Unsubscribe:
        """Call `callback(change)` on every state transition (`StateChange`). Returns a
        function that removes the listener."""
        return self._listeners.on_state(callback)

    def on_recovery_failed(self, callback: RecoveryCallback) -> Unsubscribe:
        """Call `callback(channel, position)` when a channel's continuity is lost: a resume
        answered `recovered: false`, the server sent `channelReset`, or a publication came
        with another epoch (or skipped offsets). The channel continues after `position`;
        refetch the state it describes. Returns a function that removes the listener."""
        return self._listeners.on_recovery_failed(callback)

    # -- commands --------------------------------------------------------------------------

    async def subscribe(self, channel: str) -> dict[str, Any]:
        """Subscribe to a channel; returns the reply data (`channel`, `epoch`, `offset`,
        maybe `alreadySubscribed`). Raises `CommandError` (`forbidden`, `invalid_channel`,
        `too_many_subscriptions`, ...). The subscription is restored on every reconnect."""
        with self._channels.joining(channel):
            return await self.command("subscribe", channel=channel)

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
        with self._channels.joining(f"workflow:{workflow_id}"):
            reply = await self.command("workflowOpened", **fields)
        self._rooms.opened(workflow_id, state)
        return reply

    async def close_workflow(self, workflow_id: str) -> None:
        """n8n's `workflowClosed`: leave the room (the tab's locks there go with it) and
        the workflow's channel."""
        self._rooms.closed(workflow_id)
        await self.command("workflowClosed", workflowId=workflow_id)

    async def update_presence(self, workflow_id: str, state: Mapping[str, Any]) -> None:
        """Show the other collaborators this tab's state (selected node, panel, status)."""
        await self.command("presenceUpdate", workflowId=workflow_id, state=dict(state))
        self._rooms.presence(workflow_id, state)

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
        with self._channels.joining(f"execution:{execution_id}"):
            return await self.command("executionSnapshot", executionId=execution_id)

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
        connection = self._connection
        push = connection.url if connection is not None else self.url
        base = self._bases.get(push, next(iter(self._bases.values())))
        url = output_url(output, base, list(self._bases.values()))
        token = self._token if self._token is not None else await self._token_value()
        try:
            return await self._dialer.get_json(url, token, self._connect_timeout)
        except RequestFailed as exc:
            raise OutputFetchError(str(exc), status=exc.status, code=exc.code, url=url) from exc

    async def command(self, command_type: str, /, **fields: Any) -> dict[str, Any]:
        """Send a command with a fresh `id` and return its reply's `data`.

        Raises `CommandError` (the server's `code`), `CommandTimeout` after
        `command_timeout` seconds (queue time included), `QueueFull` when disconnected with
        `command_queue_size` commands already waiting, `ConnectionLost` when the connection
        dropped after a non-idempotent command was sent, `ClientClosed`."""
        if command_type == "heartbeat":
            raise ValueError("heartbeat is never answered: use send()")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[dict[str, Any]] = loop.create_future()
        item = self._queue.command(command_type, fields, future)
        self._enqueue(item)
        try:
            async with asyncio.timeout(self._command_timeout):
                return await future
        except TimeoutError:
            raise CommandTimeout(
                f"{command_type}: no reply within {self._command_timeout} s"
            ) from None
        finally:
            self._queue.discard(item)

    def send(self, message_type: str, /, **fields: Any) -> None:
        """Send a message that gets no reply (e.g. n8n's `heartbeat`), in order with the
        commands. It waits in the queue while disconnected (`QueueFull` when full) and is
        dropped if the connection breaks before it is written."""
        self._enqueue(Outgoing({"type": message_type, **fields}, None, False))

    def _enqueue(self, item: Outgoing) -> None:
        if self._state is ConnectionState.CLOSED:
            raise self._closed_exception()
        self._queue.put(item, bounded=self._state is not ConnectionState.CONNECTED)

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
                    what = "replaced" if ended.code == CloseCode.REPLACED else "forbidden"
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
            elif ended is not None and ended.code == CloseCode.RATE_LIMITED:
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
        channels = self._channels.handshake()
        if channels:
            params["channels"] = ",".join(channels)
        positions = self.positions
        if positions:
            params["lastEventId"] = format_positions(positions)
        return params

    async def _open(self, url: str) -> Connection:
        """One attempt: WebSocket or SSE as configured (auto: WebSocket, then SSE for a URL
        whose WebSocket handshake is refused and that never had a WebSocket)."""
        async with asyncio.timeout(self._connect_timeout):
            token = await self._token_value()
            self._token = token
            return await self._dial(url, self._handshake_params(), token)

    async def _dial(self, url: str, params: dict[str, str], token: str) -> Connection:
        """Open one connection with the configured transport (the `Dialer` chooses)."""
        return await self._dialer.open(url, params, token)

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
            sender = asyncio.get_running_loop().create_task(
                self._queue.send_loop(
                    connection, self._command_timeout, self._inbound.handle_message
                )
            )
            while True:
                frame = await connection.receive()
                if frame is None:
                    break
                await self._inbound.handle(frame)
        except Exception as exc:
            if not _is_network_error(exc):
                raise
            error = exc
            connection.note_close(CloseCode.ABNORMAL_CLOSURE, repr(exc))
        finally:
            self._connection = None
            self._connected_event.clear()
            self._inbound.connection_ended()
            if sender is not None:
                sender.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await sender
            await connection.close()
            self._queue.requeue_inflight()
        return _Ended(connected, connection.close_code, connection.close_reason, error)

    def _on_connected(self, connection: Connection, message: dict[str, Any]) -> None:
        data = message.get("data")
        if not isinstance(data, dict):
            data = {}
        self._user_id = data.get("userId") if isinstance(data.get("userId"), str) else None
        push_ref = data.get("pushRef") if isinstance(data.get("pushRef"), str) else None
        self._channels.set_own(push_ref, self._user_id)
        ping_interval = data.get("pingInterval")
        if isinstance(ping_interval, int | float) and ping_interval > 0:
            connection.set_idle_timeout(max(2.5 * float(ping_interval), 10.0))
        failed = self._inbound.connected(data)
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
        self._listeners.message(to_message(message))
        for channel, position in failed:
            self._inbound.recovery_failed(channel, position)
        # each room goes before what is queued, the last one first
        rejoin = [Outgoing(room, None, False) for room in self._rooms.rejoin()]
        self._queue.put_first(rejoin[::-1])

    # -- the token -------------------------------------------------------------------------

    def _token_refreshed(self, token: str) -> None:
        """A `refresh` was answered: the token is the connection's from now on."""
        self._token = token
        if isinstance(self._connection, SseConnection):
            self._connection.token = token

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

    # -- state ---------------------------------------------------------------------------

    def _change(self, state: ConnectionState, **details: Any) -> StateChange:
        return StateChange(state=state, previous=self._state, **details)

    def _set_state(self, change: StateChange) -> None:
        self._state = change.state
        self._listeners.state(change)

    def _shut(self, error: ClientError, change: StateChange) -> None:
        """Close for good: fail what waits, tell the listeners, stop the dispatcher."""
        if self._state is ConnectionState.CLOSED:
            return
        self._close_error = error
        self._queue.fail_all(self._closed_exception())
        self._set_state(change)
        self._connected_event.clear()
        self._closed_event.set()
        if self._connected_once is not None and not self._connected_once.done():
            self._connected_once.set_exception(error)
        self._listeners.stop()

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


def _retrieve(future: asyncio.Future[None]) -> None:
    """Mark a future's exception as retrieved (nobody may be waiting for it)."""
    if not future.cancelled():
        future.exception()


def _is_network_error(exc: BaseException) -> bool:
    return isinstance(exc, aiohttp.ClientError | OSError | TimeoutError | HandshakeFailed)
