"""The node: one livepush server process. It publishes (validate, encode once, broker), routes
what the broker delivers to local sessions, and runs the client commands of every connection.

One message, publisher to browser: `Node.publish` -> `Broker.publish` (offset, history) ->
`Node._on_publication` -> `Hub.fan_out` -> `Session.deliver` -> transport.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import msgspec

from livepush.auth.policy import AuthorizationPolicy, ClaimsPolicy
from livepush.auth.tokens import Identity, TokenVerifier
from livepush.collab.rooms import ROOM_PREFIX, Collab, CollabSettings
from livepush.core.deadlines import Deadlines
from livepush.core.hub import Hub, own_channels
from livepush.core.ratelimit import RateDecision, TokenBucket
from livepush.core.session import FrameWriter, Session, SessionLimits
from livepush.engines.base import Engine, EngineUnavailable, Recovery
from livepush.execution.relay import (
    OUTPUT_MARKER,
    STREAM_NOTICE,
    Event,
    ExecutionRelay,
    ExecutionSettings,
    prepare,
)
from livepush.execution.transfer import OutputTransfers
from livepush.metrics import Metrics
from livepush.protocol import PROTOCOL_VERSION
from livepush.protocol.catalogue import metric_label
from livepush.protocol.channels import (
    SYSTEM,
    is_valid_user_id,
    parse_channel,
    push_channel,
    user_channel,
)
from livepush.protocol.commands import (
    Command,
    CommandError,
    Ephemeral,
    ExecutionSnapshot,
    Heartbeat,
    NodeLockReleased,
    NodeLockRequested,
    Ping,
    PresenceUpdate,
    Refresh,
    Since,
    Subscribe,
    Unsubscribe,
    WorkflowClosed,
    WorkflowOpened,
    WriteAccessHeartbeat,
    WriteAccessReleaseRequested,
    WriteAccessRequested,
    decode_command,
    peek_request_id,
)
from livepush.protocol.commands import (
    Presence as PresenceQuery,
)
from livepush.protocol.envelope import (
    Priority,
    Publication,
    StreamPosition,
    control_message,
    error_message,
    new_publication,
)
from livepush.protocol.errors import CloseCode, ErrorCode, ProtocolError
from livepush.protocol.execution import EXECUTION_EVENTS

log = logging.getLogger(__name__)

Reply = Callable[[bytes], None]


@dataclass(frozen=True, slots=True)
class NodeSettings:
    """The node's behaviour settings (a subset of `Config`)."""

    recovery_limit: int = 1000
    push_ref_ttl: float = 300.0
    max_connections_per_user: int = 100
    max_publish_bytes: int = 16 * 1024 * 1024
    token_expiry_warning: float = 30.0
    ping_interval: float = 25.0
    #: Track who is in each explicitly subscribed channel (in the engine, cluster-wide).
    presence: bool = True
    #: A connection's presence lapses this long after its node stops renewing it (node died).
    presence_ttl: float = 30.0
    #: See `Hub.flush_passes`.
    flush_passes: int = 1
    #: The execution path (livepush/execution).
    execution: ExecutionSettings = field(default_factory=ExecutionSettings)
    #: Collaboration rooms (default: timed to fit `presence_ttl`).
    collab: CollabSettings | None = None
    #: A lock its tab has not asked for or confirmed (heartbeat) for this long is released,
    #: even if the tab stays connected (a frozen or forgotten tab); n8n's `writeLockTtl`.
    lock_idle_ttl: float = 120.0


@dataclass(slots=True)
class _Joined:
    channel: str
    position: StreamPosition
    missed: list[Publication]
    recovered: bool | None
    after_offset: int

    @property
    def start(self) -> StreamPosition:
        """Where the client stands once the missed publications are out."""
        return StreamPosition(self.position.epoch, self.after_offset)

    def release(self, session: Session, *, late_duplicates: bool) -> list[Publication]:
        """Hand the session what it missed and what was held meanwhile. `late_duplicates`:
        the broker may deliver live publications after a history read that included them
        (a remote broker); the session then drops those for a while."""
        epoch = self.position.epoch if late_duplicates else None
        return session.release(self.channel, self.missed, self.after_offset, epoch)

    def describe(self) -> dict[str, Any]:
        info: dict[str, Any] = {
            "channel": self.channel,
            "epoch": self.position.epoch,
            "offset": self.position.offset,
        }
        if self.recovered is not None:
            info["recovered"] = self.recovered
            info["missed"] = len(self.missed)
        return info


class Node:
    """A livepush server process: publishing, routing and client commands."""

    def __init__(
        self,
        engine: Engine,
        verifier: TokenVerifier,
        *,
        policy: AuthorizationPolicy | None = None,
        settings: NodeSettings | None = None,
        limits: SessionLimits | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.broker = engine.broker
        self.presence = engine.presence
        self.verifier = verifier
        self.policy: AuthorizationPolicy = policy or ClaimsPolicy()
        self.settings = settings or NodeSettings()
        self.limits = limits or SessionLimits()
        self.metrics = metrics or Metrics()
        self.hub = Hub(flush_passes=self.settings.flush_passes)
        self.draining = False
        self.deadlines = Deadlines()
        self._tasks: list[asyncio.Task[None]] = []
        self._drained = asyncio.Event()
        #: Locks with fencing tokens (collaboration).
        self.locks = engine.locks
        self.executions = ExecutionRelay(engine.executions, self.settings.execution)
        self.transfers = OutputTransfers(
            engine.executions, chunk_bytes=self.settings.execution.chunk_bytes, metrics=self.metrics
        )
        self.hub.watched = _WATCHED
        self.hub.observer = self._observe
        #: Collaboration rooms (presence of editors, cursors).
        self.collab = Collab(
            self.broker,
            self.presence,
            self.hub,
            self.metrics,
            self._spawn,
            self.settings.collab or CollabSettings.for_presence_ttl(self.settings.presence_ttl),
            locks=self.locks,
            announce=self._announce,
        )
        self._background: set[asyncio.Task[None]] = set()
        self._recoveries: dict[tuple[str, str, int], asyncio.Future[Recovery]] = {}
        self._follow_batches: dict[tuple[str, str], list[Session]] = {}
        self.broker.set_handler(self._on_publication)
        self.broker.set_reset_handler(self._on_reset)
        self.broker.set_command_handler(self._run_local_commands)

    async def start(self) -> None:
        """Start the engine and the node's timers (token expiry, keep-alive)."""
        await self.broker.start()
        await self.presence.start()
        await self.executions.store.start()
        await self.locks.start()
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._tick_deadlines()),
            loop.create_task(self._keepalive()),
            loop.create_task(self._renew()),
            loop.create_task(self.collab.poll()),
        ]

    async def close(self) -> None:
        """Stop the timers, the engine and the policy's resources."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        await self.transfers.close()
        for job in list(self._background):
            job.cancel()
        await self.executions.store.close()
        await self.locks.close()
        await self.policy.close()
        await self.presence.close()
        await self.broker.close()

    @property
    def ready(self) -> bool:
        """Whether this node should receive new connections."""
        return not self.draining and self.broker.ready

    # -- publishing --------------------------------------------------------------------------

    async def publish(
        self,
        channel: str,
        message_type: str,
        data: dict[str, Any] | bytes,
        *,
        priority: Priority = Priority.RELIABLE,
        key: str | None = None,
    ) -> Publication:
        """Publish one message to one channel; returns it placed at its stream position
        (see `new_publication` for what `data` may be). An execution event published to
        `execution:<id>` takes the execution path (`publish_execution`)."""
        if message_type in EXECUTION_EVENTS and channel.startswith("execution:"):
            return await self.publish_event(
                prepare(message_type, data, self.settings.execution, channel=channel)
            )
        publication = new_publication(
            channel,
            message_type,
            data,
            priority=priority,
            key=key,
            max_bytes=self.settings.max_publish_bytes,
        )
        placed = await self.broker.publish(publication)
        self.metrics.publications.labels(metric_label(message_type)).inc()
        return placed

    async def publish_execution(
        self,
        event_type: str,
        data: dict[str, Any] | bytes,
        *,
        push_ref: str | None = None,
        workflow_id: str | None = None,
    ) -> Publication:
        """Publish one execution event (docs/protocol.md, "Executions"): to
        `execution:<id>`, recorded in the execution's state, followed by the tab `push_ref`
        and the watchers of `workflow_id`."""
        event = prepare(
            event_type,
            data,
            self.settings.execution,
            push_ref=push_ref,
            workflow_id=workflow_id,
        )
        return await self.publish_event(event)

    async def publish_event(self, event: Event) -> Publication:
        """Publish an execution event checked by `prepare` (the HTTP API checks a whole
        batch first)."""
        placed = await self.executions.publish_prepared(event)
        self.metrics.publications.labels(metric_label(event.type)).inc()
        return placed

    async def publish_to_push_ref(
        self, push_ref: str, message_type: str, data: dict[str, Any] | bytes
    ) -> Publication:
        """Publish to one tab (its `push:<pushRef>` channel), as n8n's `sendToOne`."""
        return await self.publish(push_channel(push_ref), message_type, data)

    async def publish_to_users(
        self, user_ids: Iterable[str], message_type: str, data: dict[str, Any] | bytes
    ) -> list[Publication]:
        """Publish to every tab of each user (their `user:<id>` channels), as `sendToUsers`."""
        return [
            await self.publish(user_channel(user_id), message_type, data) for user_id in user_ids
        ]

    async def broadcast(self, message_type: str, data: dict[str, Any] | bytes) -> Publication:
        """Publish to every connection (the `system` channel)."""
        return await self.publish(SYSTEM, message_type, data)

    def _on_publication(self, publication: Publication) -> None:
        if publication.channel.startswith(ROOM_PREFIX):
            self.collab.on_publication(publication)
            return
        if publication.type in _NODE_LOCK_TYPES:
            self.collab.observe_lock(publication)  # (and delivered, below)
        recipients = self.hub.fan_out(publication)
        self.metrics.fanned_out(publication, recipients)

    # -- executions --------------------------------------------------------------------------

    def _observe(self, session: Session, publication: Publication) -> None:
        """A session was handed a publication the execution path acts on."""
        kind = publication.type
        if kind == STREAM_NOTICE:
            notice = msgspec.json.decode(publication.data)
            channel, epoch = notice.get("channel"), notice.get("epoch")
            if isinstance(channel, str) and isinstance(epoch, str):
                # every session told in this loop iteration follows in one batch
                batch = self._follow_batches.get((channel, epoch))
                if batch is None:
                    batch = self._follow_batches[(channel, epoch)] = []
                    self._spawn(self._follow(channel, epoch))
                batch.append(session)
        elif kind == OUTPUT_MARKER:
            self.transfers.start(session, publication)
        elif session.follows and publication.channel in session.follows:  # finished
            self._spawn(self._unfollow(session, publication.channel))

    def _observe_all(self, session: Session, delivered: list[Publication]) -> None:
        for publication in delivered:
            if publication.type in _WATCHED:
                self._observe(session, publication)

    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _follow(self, channel: str, epoch: str) -> None:
        """Subscribe the sessions that received an execution's `executionStream` notice (in
        their tab's or workflow's channel) to the execution, from its start: one engine
        subscription and one history read for all of them (200 watchers of a workflow are
        one batch, not 200 joins). An engine that fails is retried a few times; then the
        clients are told (they can still catch up with `executionSnapshot`)."""
        batch = self._follow_batches.pop((channel, epoch), [])
        try:
            parse_channel(channel)  # (the notice comes from the server; checked all the same)
        except ProtocolError:
            return
        sessions = [s for s in dict.fromkeys(batch) if not s.closed and channel not in s.channels]
        if not sessions:
            return
        for session in sessions:
            if session.follows is None:
                session.follows = set()
            session.follows.add(channel)
            session.hold(channel)
            self.hub.subscribe(session, channel)
        self.metrics.channels.set(self.hub.channel_count)
        since = StreamPosition(epoch, 0)
        recovery: Recovery | None = None
        failure: ProtocolError | None = None
        for attempt in range(FOLLOW_ATTEMPTS):
            try:
                await self.broker.subscribe(channel)
                recovery = await self.broker.recover(channel, since, self.settings.recovery_limit)
                break
            except EngineUnavailable as exc:
                failure = exc
                await asyncio.sleep(0.2 * 2**attempt)
            except Exception:
                log.exception("following %s failed", channel)
                break
        if recovery is None:
            emptied = False
            for session in sessions:
                session.abandon(channel)
                if session.follows is not None:
                    session.follows.discard(channel)
                emptied = self.hub.unsubscribe(session, channel) or emptied
                if failure is not None and not session.closed:
                    session.send_control(
                        error_message(failure.code, f"following {channel}: {failure.message}")
                    )
            if emptied:
                self.metrics.channels.set(self.hub.channel_count)
                with contextlib.suppress(Exception):
                    await self.broker.unsubscribe(channel)
            return
        self.metrics.follows.inc(len(sessions))
        self.metrics.subscriptions.inc(len(sessions))
        self.metrics.recoveries.labels("recovered" if recovery.recovered else "failed").inc(
            len(sessions)
        )
        after = since.offset if recovery.recovered else recovery.position.offset
        joined = _Joined(
            channel, recovery.position, recovery.publications, recovery.recovered, after
        )
        reset: bytes | None = None
        if not recovery.recovered:
            # more than the history holds: the clients catch up with executionSnapshot
            position = recovery.position
            message = {"channel": channel, "epoch": position.epoch, "offset": position.offset}
            reset = control_message("channelReset", message)
        for session in sessions:
            if session.closed or channel not in session.channels:
                session.abandon(channel)
                continue
            if reset is not None:
                session.send_control(reset)
            session.mark({channel: joined.start})
            self._observe_all(session, joined.release(session, late_duplicates=self.broker.remote))

    async def _unfollow(self, session: Session, channel: str) -> None:
        """End a followed subscription after its execution finished."""
        if session.closed or channel not in session.channels or not _followed(session, channel):
            return
        try:
            await self.unsubscribe(session, channel)
        except Exception:
            log.exception("ending %s for %r failed", channel, session)
            return
        session.send_control(
            control_message(
                "unsubscribed",
                {
                    "channel": channel,
                    "code": "execution_finished",
                    "message": "the execution finished; its stream ended",
                },
            )
        )

    async def authorize_execution(
        self,
        identity: Identity,
        execution_id: str,
        *,
        watching: Iterable[str] = (),
        push_ref: str | None = None,
    ) -> bool:
        """Whether a user may see an execution: if they may subscribe to `execution:<id>`
        (True), or follow it (False): they may see (or already watch) its workflow, or their
        tab `push_ref` started it. Raises `forbidden` otherwise."""
        parse_channel(f"execution:{execution_id}")
        if await self.policy.can_subscribe(identity, "execution", execution_id):
            return True
        workflow, starter = await self.executions.owners(execution_id)
        if push_ref is not None and push_ref == starter:
            return False
        if workflow is not None and (
            f"workflow:{workflow}" in watching
            or await self.policy.can_subscribe(identity, "workflow", workflow)
        ):
            return False
        raise ProtocolError(ErrorCode.FORBIDDEN, f"not allowed to see execution {execution_id!r}")

    async def execution_snapshot(
        self, session: Session, execution_id: str, reply: Reply, request_id: Any = None
    ) -> None:
        """Reply with an execution's snapshot and subscribe the session to its stream from
        there (docs/protocol.md, "Catch-up")."""
        channel = f"execution:{execution_id}"
        await self.authorize_execution(
            session.identity, execution_id, watching=session.channels, push_ref=session.push_ref
        )
        taken = await self.executions.snapshot(execution_id)
        if taken is None:
            raise ProtocolError(
                ErrorCode.EXECUTION_NOT_FOUND,
                f"no execution {execution_id!r} (unknown, or its retention expired)",
            )
        snapshot, position = taken
        if channel in session.channels:
            reply(_snapshot_reply(execution_id, channel, position, snapshot, True, request_id))
            return
        joined = await self._join_checked(session, channel, position, authorized=True)
        if joined.recovered is False:
            # the stream moved on further than its history holds while we subscribed: the
            # state now is newer; what arrives up to its offset is in it
            taken = await self.executions.snapshot(execution_id)
            if taken is not None:
                snapshot, position = taken
        reply(_snapshot_reply(execution_id, channel, position, snapshot, False, request_id))
        session.mark({channel: joined.start})
        self._observe_all(session, joined.release(session, late_duplicates=self.broker.remote))

    # -- locks (n8n's workflow write lock, node locks) ----------------------------------------

    async def write_access(
        self,
        session: Session,
        workflow_id: str,
        reply: Reply,
        request_id: Any = None,
        *,
        force: bool = False,
        renew_only: bool = False,
    ) -> None:
        """n8n's `writeAccessRequested` / `writeAccessHeartbeat`: take or renew the
        workflow's write lock for this tab. A new grant is announced to the workflow's
        watchers (`writeAccessAcquired`, with the fencing token); a refusal is answered only to
        commands with an id (n8n's own messages expect no answer), with `lock_held`."""
        await self._take_lock(
            session,
            f"workflow:{workflow_id}",
            workflow_id,
            {},
            reply,
            request_id,
            force=force,
            renew_only=renew_only,
        )

    async def node_lock(
        self,
        session: Session,
        workflow_id: str,
        node_id: str,
        reply: Reply,
        request_id: Any = None,
        *,
        force: bool = False,
    ) -> None:
        """Lock one node of a workflow's canvas for this tab (renewed with its presence,
        released with it); announced as `nodeLocked` to the workflow's watchers."""
        await self._take_lock(
            session,
            f"node:{workflow_id}:{node_id}",
            workflow_id,
            {"nodeId": node_id},
            reply,
            request_id,
            force=force,
        )

    async def _take_lock(
        self,
        session: Session,
        name: str,
        workflow_id: str,
        what: dict[str, str],
        reply: Reply,
        request_id: Any,
        *,
        force: bool = False,
        renew_only: bool = False,
    ) -> None:
        channel = f"workflow:{workflow_id}"
        await self._authorize(session, channel)
        if not await self.policy.can_write(session.identity, "workflow", workflow_id):
            raise ProtocolError(ErrorCode.FORBIDDEN, f"{channel!r} is read-only for this user")
        held = (session.locks or {}).get(name)
        label = f"the lock of node {what['nodeId']!r}" if what else "the write lock"
        if renew_only and held is None:
            raise ProtocolError(ErrorCode.LOCK_NOT_HELD, f"this tab does not hold {label}")
        granted, grant = await self.locks.acquire(
            name, session.push_ref, session.user_id, self.settings.presence_ttl, takeover=force
        )
        if not granted:
            if held is not None and session.locks is not None:
                session.locks.pop(name, None)  # lost (expired and taken)
            if request_id is not None:
                reply(
                    error_message(
                        ErrorCode.LOCK_HELD,
                        f"{label} of {workflow_id!r} is held by user {grant.owner!r}"
                        + (" in another tab" if grant.owner == session.user_id else ""),
                        request_id,
                    )
                )
            return
        if session.locks is None:
            session.locks = {}
        session.locks[name] = grant.token
        if session.lock_seen is None:
            session.lock_seen = {}
        session.lock_seen[name] = time.monotonic()
        if grant.token != held:
            await self._announce(
                channel,
                "nodeLocked" if what else "writeAccessAcquired",
                {
                    "workflowId": workflow_id,
                    **what,
                    "userId": session.user_id,
                    "clientId": session.push_ref,
                    "fencingToken": grant.token,
                },
            )
        if request_id is not None:
            reply(
                control_message(
                    "reply",
                    {
                        "workflowId": workflow_id,
                        **what,
                        "fencingToken": grant.token,
                        "ttl": grant.ttl,
                    },
                    request_id,
                )
            )

    async def release_lock(self, session: Session, name: str) -> bool:
        """Let go of a lock the session holds, and tell the workflow's watchers."""
        token = (session.locks or {}).pop(name, None)
        (session.lock_seen or {}).pop(name, None)
        if token is None:
            return False
        released = await self.locks.release(name, session.push_ref, token)
        # (claimed, so that no node announces its end again when it notices it)
        if released and await self.collab.claim_lock_end(name, token):
            if name.startswith("workflow:"):
                await self._announce(name, "writeAccessReleased", {"workflowId": name[9:]})
            elif name.startswith("node:"):
                _, workflow_id, node_id = name.split(":", 2)
                await self._announce(
                    f"workflow:{workflow_id}",
                    "nodeUnlocked",
                    {"workflowId": workflow_id, "nodeId": node_id},
                )
        return released

    async def _announce(self, channel: str, message_type: str, data: dict[str, Any]) -> None:
        """Publish a message of the server's own (its type may be reserved to the server)."""
        await self.broker.publish(Publication(channel, message_type, msgspec.json.encode(data)))
        self.metrics.publications.labels(metric_label(message_type)).inc()

    async def close_workflow(self, session: Session, workflow_id: str) -> None:
        """n8n's `workflowClosed`: the tab leaves the workflow's room, lets go of its locks
        there (as n8n does with the write lock) and unsubscribes from `workflow:<id>`."""
        await self.collab.leave(session, workflow_id)
        await self.release_lock(session, f"workflow:{workflow_id}")
        prefix = f"node:{workflow_id}:"
        for name in [n for n in session.locks or () if n.startswith(prefix)]:
            await self.release_lock(session, name)
        await self.unsubscribe(session, f"workflow:{workflow_id}")

    def _recover(self, channel: str, since: StreamPosition) -> asyncio.Future[Recovery]:
        """`broker.recover`, shared by the sessions that ask for the same position in the same
        event-loop iteration (a reconnect storm on a remote broker): one engine call for all
        of them. The call starts after every sharer began holding the channel's
        live publications, so none of them can miss one; a later asker starts a new call."""
        key = (channel, since.epoch, since.offset)
        future = self._recoveries.get(key)
        if future is None:
            loop = asyncio.get_running_loop()
            future = self._recoveries[key] = loop.create_future()
            future.add_done_callback(_retrieve)
            self._spawn(self._run_recovery(key, since, future))
        return future

    async def _run_recovery(
        self, key: tuple[str, str, int], since: StreamPosition, future: asyncio.Future[Recovery]
    ) -> None:
        if self._recoveries.get(key) is future:
            del self._recoveries[key]  # from now on, askers start a new call
        try:
            recovery = await self.broker.recover(key[0], since, self.settings.recovery_limit)
        except BaseException as exc:
            if not future.done():
                future.set_exception(exc)
            if isinstance(exc, asyncio.CancelledError):
                raise
        else:
            if not future.done():
                future.set_result(recovery)

    def _on_reset(self, channel: str, position: StreamPosition) -> None:
        """The channel's stream lost continuity (the engine lost history, or publications
        could not be delivered): its subscribers continue from `position` and must refetch
        what the channel describes, as after `recovered: false`."""
        self.metrics.recoveries.labels("reset").inc()
        message = control_message(
            "channelReset",
            {"channel": channel, "epoch": position.epoch, "offset": position.offset},
        )
        for session in self.hub.recipients(channel):
            session.send_control(message)
            session.mark({channel: position})

    # -- connections -------------------------------------------------------------------------

    async def admit(self, push_ref: str, identity: Identity) -> None:
        """Checks made before a connection is accepted (before the WebSocket upgrade)."""
        if self.draining:
            raise ProtocolError(ErrorCode.SHUTTING_DOWN, "server is shutting down; reconnect")
        existing = self.hub.session(push_ref)
        replacing = existing is not None and existing.user_id == identity.user_id
        limit = self.settings.max_connections_per_user
        if not replacing and self.hub.user_session_count(identity.user_id) >= limit:
            raise ProtocolError(
                ErrorCode.TOO_MANY_CONNECTIONS,
                f"user {identity.user_id!r} already has {limit} connections on this server",
            )
        # The pushRef stays bound to its user for a while after disconnecting, so nobody else
        # can take it over and read the tab's recent history.
        if not await self.presence.claim(
            f"pushref:{push_ref}", identity.user_id, self.settings.push_ref_ttl
        ):
            raise ProtocolError(
                ErrorCode.PUSH_REF_IN_USE, "this pushRef belongs to another user; pick a new one"
            )

    async def open_session(
        self,
        push_ref: str,
        identity: Identity,
        writer: FrameWriter,
        *,
        channels: Iterable[str] = (),
        resume: dict[str, StreamPosition] | None = None,
    ) -> Session:
        """Register a connection: replace an older one with its pushRef, join its own channels
        and the requested ones (recovering from `resume` positions), and greet it."""
        session = Session(push_ref, identity, writer, self.limits, self.metrics)
        own = list(own_channels(session))
        for channel in own:  # held from the moment `hub.add` routes them to this session
            session.hold(channel)
        previous = self.hub.add(session)
        try:
            for channel in own:
                await self.broker.subscribe(channel)
        except BaseException:
            # the engine failed: the connection is refused and leaves nothing behind
            for channel in self.hub.remove(session):
                with contextlib.suppress(Exception):
                    await self.broker.unsubscribe(channel)
            if previous is not None:
                self.hub.add(previous)
            raise
        if previous is not None:
            await self._forget(previous)
            self.collab.transfer(previous, session)
            previous.close(
                CloseCode.REPLACED, "replaced by a newer connection with the same pushRef"
            )
        self.metrics.connections.labels(writer.transport).inc()
        self.metrics.connections_total.labels(writer.transport).inc()
        self._schedule_expiry(session)
        resume = resume or {}
        wanted = own + [c for c in dict.fromkeys((*channels, *resume)) if c not in own]
        joined: list[_Joined] = []
        refused: list[dict[str, Any]] = []
        for channel in wanted:
            try:
                if channel in own:
                    joined.append(await self._join(session, channel, resume.get(channel), own=True))
                    continue
                joined.append(await self._join_checked(session, channel, resume.get(channel)))
            except ProtocolError as exc:
                refused.append({"channel": channel, "code": exc.code.value, "message": exc.message})
        greeting: dict[str, Any] = {
            "protocol": PROTOCOL_VERSION,
            "pushRef": push_ref,
            "userId": identity.user_id,
            "pingInterval": self.settings.ping_interval,
            "expiresAt": identity.expires_at,
            "channels": [j.describe() for j in joined],
        }
        if refused:
            greeting["refused"] = refused
        session.send_control(control_message("connected", greeting))
        session.mark({j.channel: j.start for j in joined})
        for j in joined:
            self._observe_all(session, j.release(session, late_duplicates=self.broker.remote))
        return session

    async def close_session(self, session: Session) -> None:
        """Unregister a connection whose transport has ended."""
        self.deadlines.cancel(session)
        session.closed = True
        reason = session.close_code.name.lower() if session.close_code else "client_closed"
        self.metrics.disconnects.labels(reason).inc()
        self.metrics.connections.labels(session.writer.transport).dec()
        if session.rooms:
            try:
                await self.collab.leave_all(session)
            except Exception as exc:  # (its entries lapse by themselves after member_ttl)
                log.warning("leaving the rooms of %r failed: %s", session, exc)
        if session.locks:
            # a lock lives as long as its holder's presence
            for name in list(session.locks):
                try:
                    await self.release_lock(session, name)
                except Exception as exc:  # (it expires by itself after presence_ttl)
                    log.warning("releasing %s of %r failed: %s", name, session, exc)
        if self.hub.session(session.push_ref) is session:
            await self._forget(session)
            await self.presence.release(
                f"pushref:{session.push_ref}", session.user_id, self.settings.push_ref_ttl
            )
        if self.draining and not len(self.hub):
            self._drained.set()

    async def _forget(self, session: Session) -> None:
        subscriptions = len(session.channels) + len(own_channels(session))
        explicit = [c for c in session.channels if not _followed(session, c)]
        for channel in self.hub.remove(session):
            await self.broker.unsubscribe(channel)
        if self.settings.presence and explicit:
            await self.presence.leave_many([(c, session.push_ref) for c in explicit])
        self.metrics.subscriptions.dec(subscriptions)
        self.metrics.channels.set(self.hub.channel_count)

    def session(self, push_ref: str) -> Session | None:
        """The local session of a pushRef."""
        return self.hub.session(push_ref)

    # -- subscriptions -----------------------------------------------------------------------

    async def _authorize(self, session: Session, channel: str) -> bool:
        """Raise `forbidden` unless the session may subscribe; True when it may only follow
        (an execution of a workflow it may see, or that its tab started: such subscriptions
        end with the execution)."""
        kind, ident = parse_channel(channel)
        identity = session.identity
        if kind == "push":
            allowed = ident == session.push_ref
        elif kind == "user":
            allowed = ident == identity.user_id or identity.grants.admin
        elif kind == "execution":
            direct = await self.authorize_execution(
                identity, ident, watching=session.channels, push_ref=session.push_ref
            )
            return not direct
        else:
            allowed = await self.policy.can_subscribe(identity, kind, ident)
        if not allowed:
            raise ProtocolError(ErrorCode.FORBIDDEN, f"not allowed to subscribe to {channel!r}")
        return False

    async def _join_checked(
        self,
        session: Session,
        channel: str,
        since: StreamPosition | None,
        *,
        authorized: bool = False,
    ) -> _Joined:
        """An explicit subscription: within the connection's limit, and authorized (unless
        the caller has just done so)."""
        if len(session.channels) >= self.limits.max_subscriptions:
            raise ProtocolError(
                ErrorCode.TOO_MANY_SUBSCRIPTIONS,
                f"at most {self.limits.max_subscriptions} subscriptions per connection",
            )
        follow = False if authorized else await self._authorize(session, channel)
        joined = await self._join(session, channel, since, presence=not follow)
        if follow:
            if session.follows is None:
                session.follows = set()
            session.follows.add(channel)
        return joined

    async def _join(
        self,
        session: Session,
        channel: str,
        since: StreamPosition | None,
        *,
        own: bool = False,
        presence: bool = True,
    ) -> _Joined:
        # Live publications are held from the moment the session is in the fan-out set (for
        # its own channels: from `Hub.add`) until the missed ones are out, then de-duplicated
        # by offset: no gap, no duplicate.
        session.hold(channel)
        joined = False
        try:
            if not own:
                joined = True
                if self.hub.subscribe(session, channel):
                    self.metrics.channels.set(self.hub.channel_count)
                # every subscriber waits until the broker delivers the channel (the first
                # one's subscription may still be in flight)
                await self.broker.subscribe(channel)
                if self.settings.presence and presence:
                    await self.presence.join(
                        channel,
                        session.push_ref,
                        _presence_info(session),
                        self.settings.presence_ttl,
                    )
            if since is None:
                position = await self.broker.position(channel)
                result = _Joined(channel, position, [], None, position.offset)
            else:
                if self.broker.remote:
                    recovery = await asyncio.shield(self._recover(channel, since))
                else:  # in process: sharing would only add a loop iteration per session
                    recovery = await self.broker.recover(
                        channel, since, self.settings.recovery_limit
                    )
                self.metrics.recoveries.labels(
                    "recovered" if recovery.recovered else "failed"
                ).inc()
                after = since.offset if recovery.recovered else recovery.position.offset
                result = _Joined(
                    channel, recovery.position, recovery.publications, recovery.recovered, after
                )
        except BaseException:
            # (the engine failed, e.g. Redis is down) leave no half subscription behind
            session.abandon(channel)
            if joined and self.hub.unsubscribe(session, channel):
                self.metrics.channels.set(self.hub.channel_count)
                with contextlib.suppress(Exception):
                    await self.broker.unsubscribe(channel)
            raise
        self.metrics.subscriptions.inc()
        return result

    async def subscribe(
        self,
        session: Session,
        channel: str,
        since: StreamPosition | None,
        reply: Reply,
        request_id: Any = None,
    ) -> None:
        """Subscribe a session to a channel, reply, then send what it missed."""
        if channel in session.channels or self.hub.is_own(session, channel):
            position = await self.broker.position(channel)
            reply(
                control_message(
                    "reply",
                    {
                        "channel": channel,
                        "epoch": position.epoch,
                        "offset": position.offset,
                        "alreadySubscribed": True,
                    },
                    request_id,
                )
            )
            return
        joined = await self._join_checked(session, channel, since)
        reply(control_message("reply", joined.describe(), request_id))
        session.mark({channel: joined.start})
        self._observe_all(session, joined.release(session, late_duplicates=self.broker.remote))

    async def unsubscribe(self, session: Session, channel: str) -> bool:
        """Remove a subscription; False when the session was not subscribed."""
        parse_channel(channel)
        if self.hub.is_own(session, channel):
            raise ProtocolError(
                ErrorCode.FORBIDDEN,
                "a connection cannot leave its own push:, user: or system channel",
            )
        if channel not in session.channels:
            return False
        followed = _followed(session, channel)
        if followed and session.follows is not None:
            session.follows.discard(channel)
        if self.hub.unsubscribe(session, channel):
            await self.broker.unsubscribe(channel)
            self.metrics.channels.set(self.hub.channel_count)
        self.metrics.subscriptions.dec()
        if self.settings.presence and not followed:
            await self.presence.leave(channel, session.push_ref)
        session.mark({channel: None})
        return True

    # -- tokens and keep-alive ---------------------------------------------------------------

    def _schedule_expiry(self, session: Session) -> None:
        expires_at = session.identity.expires_at
        if expires_at is None:
            self.deadlines.cancel(session)
            return
        warn_at = expires_at - self.settings.token_expiry_warning
        self.deadlines.schedule(session, max(warn_at, time.time()))

    def _on_deadline(self, session: Session) -> None:
        expires_at = session.identity.expires_at
        if session.closed or expires_at is None:
            return
        if not session.warned:
            # Always warned first, even at the last moment, so a client can refresh.
            session.warned = True
            session.send_control(control_message("tokenExpiring", {"expiresAt": expires_at}))
            self.deadlines.schedule(session, expires_at)
        elif expires_at <= time.time() + self.deadlines.resolution:
            session.send_control(error_message(ErrorCode.TOKEN_EXPIRED, "token expired"))
            session.close(CloseCode.TOKEN_EXPIRED, "token expired")
        else:
            self.deadlines.schedule(session, expires_at)

    async def _tick_deadlines(self) -> None:
        while True:
            await asyncio.sleep(self.deadlines.resolution)
            for session in self.deadlines.due(time.time()):
                try:
                    self._on_deadline(session)
                except Exception:
                    log.exception("token expiry of %r failed", session)

    async def _keepalive(self) -> None:
        """Ping every connection each `ping_interval`; drop the ones that did not answer the
        previous ping. One timer for all connections instead of one per connection."""
        while True:
            await asyncio.sleep(self.settings.ping_interval)
            for session in self.hub.sessions():
                if session.closed:
                    continue
                try:
                    alive = session.writer.ping()
                except Exception:
                    log.exception("ping of %r failed", session)
                    alive = False
                if not alive:
                    session.close(CloseCode.ABNORMAL_CLOSURE, "no answer to ping", flush=False)

    async def _renew(self) -> None:
        """Keep this node's shared state alive in the engine: every connection's presence in
        its channels (every third of `presence_ttl`) and its pushRef claim (every third of
        `push_ref_ttl`). When the node dies, both lapse by themselves."""
        settings = self.settings
        interval = min(settings.presence_ttl, settings.push_ref_ttl) / 3
        claims_renewed = time.monotonic()
        while True:
            await asyncio.sleep(interval)
            try:
                sessions = [s for s in self.hub.sessions() if not s.closed]
                if settings.presence:
                    entries = [
                        (channel, s.push_ref, _presence_info(s))
                        for s in sessions
                        for channel in s.channels
                        if not _followed(s, channel)
                    ]
                    if entries:
                        await self.presence.join_many(entries, settings.presence_ttl)
                members = self.collab.renewals(sessions)
                if members:
                    await self.presence.join_many(members, self.collab.settings.member_ttl)
                now = time.monotonic()
                for s in sessions:
                    for name, token in list((s.locks or {}).items()):
                        if now - (s.lock_seen or {}).get(name, now) > settings.lock_idle_ttl:
                            await self.release_lock(s, name)  # not confirmed for too long
                            continue
                        granted, grant = await self.locks.acquire(
                            name, s.push_ref, s.user_id, settings.presence_ttl
                        )
                        if (not granted or grant.token != token) and s.locks is not None:
                            s.locks.pop(name, None)
                if time.monotonic() - claims_renewed >= settings.push_ref_ttl / 3:
                    claims_renewed = time.monotonic()
                    await self.presence.claim_many(
                        [(f"pushref:{s.push_ref}", s.user_id) for s in sessions],
                        settings.push_ref_ttl,
                    )
            except EngineUnavailable as exc:
                log.warning("renewing presence failed (%s); retrying at the next interval", exc)
            except Exception:
                log.exception("renewing presence failed; retrying at the next interval")

    async def members(self, channel: str) -> dict[str, Any]:
        """Who is in a channel, cluster-wide: its connections (pushRef and user) and users."""
        parse_channel(channel)
        members = await self.presence.members(channel)
        connections = [
            {"pushRef": push_ref, "userId": info.get("userId")}
            for push_ref, info in sorted(members.items())
        ]
        users = sorted({c["userId"] for c in connections if c["userId"] is not None})
        return {"channel": channel, "connections": connections, "users": users}

    def refresh(self, session: Session, token: str) -> Identity:
        """Swap a session's token for a fresh one of the same user."""
        identity = self.verifier.verify(token)
        if identity.user_id != session.user_id:
            raise ProtocolError(
                ErrorCode.TOKEN_USER_MISMATCH, "a refreshed token must belong to the same user"
            )
        session.identity = identity
        session.warned = False
        self._schedule_expiry(session)
        return identity

    # -- client messages ---------------------------------------------------------------------

    async def handle_message(
        self, session: Session, raw: str | bytes, reply: Reply | None = None
    ) -> None:
        """One client message: rate limit, decode, execute. Replies go to `reply` (the SSE
        POST response) or, by default, down the connection itself."""
        reply = reply or session.send_control
        if _maybe_ephemeral(raw):
            ephemeral = _decode_ephemeral(raw)
            if ephemeral is not None:
                # cursors and the like have their own rate limit, over which they are dropped
                # without a word (a mouse fires many moves; the next one supersedes them)
                if self._ephemeral_allowed(session):
                    self.metrics.received(ephemeral.type, len(raw))
                    await self.execute(session, ephemeral, reply)
                return
        decision = session.rate.take()
        if decision is not RateDecision.ALLOW:
            self.metrics.received("rate_limited", len(raw))
        if decision is RateDecision.ABUSIVE:
            self._send_error(
                reply,
                ProtocolError(
                    ErrorCode.RATE_LIMITED, "message rate far over the limit; disconnecting"
                ),
                peek_request_id(raw),
            )
            session.close(CloseCode.RATE_LIMITED, "message rate limit exceeded")
            return
        if decision is RateDecision.LIMITED:
            # answered with the command's id, so a client waiting for it is not left hanging
            self._send_error(
                reply,
                ProtocolError(
                    ErrorCode.RATE_LIMITED,
                    f"more than {session.rate.rate:g} messages per second; message dropped",
                ),
                peek_request_id(raw),
            )
            return
        try:
            command = decode_command(raw)
        except ProtocolError as exc:
            self.metrics.received("invalid", len(raw))
            request_id = exc.request_id if isinstance(exc, CommandError) else None
            self._send_error(reply, exc, request_id)
            return
        self.metrics.received(command.type, len(raw))
        await self.execute(session, command, reply)

    def _ephemeral_allowed(self, session: Session) -> bool:
        bucket = session.ephemeral_rate
        if bucket is None:
            limits = session.limits
            bucket = session.ephemeral_rate = TokenBucket(
                limits.ephemeral_rate, limits.ephemeral_burst
            )
        if bucket.try_take():
            return True
        self.metrics.collab_ephemeral_limited.inc()
        return False

    async def run_commands(self, push_ref: str, user_id: str, messages: list[bytes]) -> list[bytes]:
        """Run client messages for the connection `push_ref` (the SSE POST), on this node or,
        through the engine, on the node of the cluster that holds it; returns the replies."""
        replies = await self._run_local_commands(push_ref, user_id, messages)
        if replies is None:
            replies = await self.broker.forward_commands(push_ref, user_id, messages)
        if replies is None:
            raise ProtocolError(
                ErrorCode.SESSION_NOT_FOUND, f"no open connection with pushRef {push_ref!r}"
            )
        return replies

    async def _run_local_commands(
        self, push_ref: str, user_id: str, messages: list[bytes]
    ) -> list[bytes] | None:
        """None when the connection is not on this node."""
        session = self.hub.session(push_ref)
        if session is None or session.closed:
            return None
        if session.user_id != user_id:
            raise ProtocolError(ErrorCode.FORBIDDEN, "this pushRef belongs to another user")
        replies: list[bytes] = []
        for raw in messages:
            await self.handle_message(session, raw, replies.append)
        return replies

    async def execute(self, session: Session, command: Command, reply: Reply) -> None:
        """Run one decoded command; its reply or error goes to `reply`."""
        try:
            await self._dispatch(session, command, reply)
        except ProtocolError as exc:
            self._send_error(reply, exc, command.id)
        except Exception:
            log.exception("command %s of %r failed", command.type, session)
            self._send_error(
                reply, ProtocolError(ErrorCode.INTERNAL_ERROR, "internal error"), command.id
            )

    async def _dispatch(self, session: Session, command: Command, reply: Reply) -> None:
        rid = command.id
        if isinstance(command, Heartbeat):
            return
        if isinstance(command, Ping):
            reply(control_message("reply", {}, rid))
        elif isinstance(command, Subscribe):
            await self.subscribe(session, command.channel, _position(command.since), reply, rid)
        elif isinstance(command, Unsubscribe):
            if not await self.unsubscribe(session, command.channel):
                raise ProtocolError(
                    ErrorCode.NOT_SUBSCRIBED, f"not subscribed to {command.channel!r}"
                )
            reply(control_message("reply", {"channel": command.channel}, rid))
        elif isinstance(command, Refresh):
            identity = self.refresh(session, command.token)
            reply(control_message("reply", {"expiresAt": identity.expires_at}, rid))
        elif isinstance(command, PresenceQuery):
            if command.channel not in session.channels:
                raise ProtocolError(
                    ErrorCode.NOT_SUBSCRIBED, f"subscribe to {command.channel!r} first"
                )
            reply(control_message("reply", await self.members(command.channel), rid))
        elif isinstance(command, WorkflowOpened):
            channel = f"workflow:{command.workflowId}"
            if channel not in session.channels or rid is not None:
                # (already subscribed: answered like a repeated subscribe, if it has an id)
                await self.subscribe(
                    session, channel, None, reply if rid is not None else _discard, rid
                )
            if channel in session.channels:
                await self.collab.join(session, command.workflowId, command.state)
        elif isinstance(command, PresenceUpdate):
            await self.collab.update(session, command.workflowId, command.state)
            if rid is not None:
                reply(control_message("reply", {"workflowId": command.workflowId}, rid))
        elif isinstance(command, Ephemeral):
            self.collab.ephemeral(session, command.workflowId, command.kind, command.data)
        elif isinstance(command, NodeLockRequested):
            await self.node_lock(
                session, command.workflowId, command.nodeId, reply, rid, force=command.force
            )
        elif isinstance(command, NodeLockReleased):
            name = f"node:{command.workflowId}:{command.nodeId}"
            if not await self.release_lock(session, name):
                raise ProtocolError(
                    ErrorCode.LOCK_NOT_HELD, f"this tab does not hold the lock of {name!r}"
                )
            if rid is not None:
                reply(control_message("reply", {"workflowId": command.workflowId}, rid))
        elif isinstance(command, WriteAccessRequested | WriteAccessHeartbeat):
            await self.write_access(
                session,
                command.workflowId,
                reply,
                rid,
                force=isinstance(command, WriteAccessRequested) and command.force,
                renew_only=isinstance(command, WriteAccessHeartbeat),
            )
        elif isinstance(command, WriteAccessReleaseRequested):
            released = await self.release_lock(session, f"workflow:{command.workflowId}")
            if rid is not None:
                if not released:
                    raise ProtocolError(
                        ErrorCode.LOCK_NOT_HELD, "this tab does not hold the write lock"
                    )
                reply(control_message("reply", {"workflowId": command.workflowId}, rid))
        elif isinstance(command, ExecutionSnapshot):
            await self.execution_snapshot(session, command.executionId, reply, rid)
        elif isinstance(command, WorkflowClosed):
            await self.close_workflow(session, command.workflowId)
            if rid is not None:
                reply(control_message("reply", {}, rid))
        else:  # pragma: no cover - COMMANDS and this dispatch are kept in step
            raise ProtocolError(ErrorCode.UNKNOWN_COMMAND, f"unhandled {command.type!r}")

    def _send_error(self, reply: Reply, exc: ProtocolError, request_id: Any) -> None:
        self.metrics.errors.labels(exc.code.value).inc()
        reply(error_message(exc.code, exc.message, request_id))

    # -- shutdown ----------------------------------------------------------------------------

    async def drain(self, grace: float) -> None:
        """Ask every client to reconnect elsewhere, flush their queues, wait up to `grace`."""
        self.draining = True
        self._drained.clear()
        for session in self.hub.sessions():
            session.close(CloseCode.SERVICE_RESTART, "server restarting; reconnect")
        if len(self.hub):
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(grace):
                    await self._drained.wait()
        for session in self.hub.sessions():
            session.close(CloseCode.SERVICE_RESTART, "server restarting; reconnect", flush=False)


#: Messages holding this may be ephemeral updates (checked before the general rate limit).
_EPHEMERAL_MARK = b'"ephemeral"'
_EPHEMERAL_TEXT = '"ephemeral"'


def _maybe_ephemeral(raw: str | bytes) -> bool:
    if isinstance(raw, bytes):
        return _EPHEMERAL_MARK in raw
    return _EPHEMERAL_TEXT in raw


def _decode_ephemeral(raw: str | bytes) -> Ephemeral | None:
    """The message as an ephemeral update, None when it is anything else."""
    try:
        command = decode_command(raw)
    except ProtocolError:
        return None
    return command if isinstance(command, Ephemeral) else None


#: Tries to follow an execution while the engine fails (0.2 s, 0.4 s... apart).
FOLLOW_ATTEMPTS = 4

#: Node lock announcements, which the collaboration rooms follow.
_NODE_LOCK_TYPES = frozenset({"nodeLocked", "nodeUnlocked"})

#: Publication types the node acts on when a session receives one.
_WATCHED = frozenset({STREAM_NOTICE, OUTPUT_MARKER, "executionFinished"})


def _snapshot_reply(
    execution_id: str,
    channel: str,
    position: StreamPosition,
    snapshot: dict[str, Any],
    already: bool,
    request_id: Any,
) -> bytes:
    data: dict[str, Any] = {
        "executionId": execution_id,
        "channel": channel,
        "epoch": position.epoch,
        "offset": position.offset,
        "snapshot": snapshot,
    }
    if already:
        data["alreadySubscribed"] = True
    return control_message("reply", data, request_id)


def _presence_info(session: Session) -> dict[str, Any]:
    """What a connection shows in presence: shared by the connections of one user (an
    in-process presence store keeps it per connection)."""
    return _user_info(session.user_id)


@functools.lru_cache(maxsize=65536)
def _user_info(user_id: str) -> dict[str, Any]:
    return {"userId": user_id}


def _position(since: Since | None) -> StreamPosition | None:
    return None if since is None else StreamPosition(since.epoch, since.offset)


def _followed(session: Session, channel: str) -> bool:
    """Whether the session follows the channel (no presence entry of its own)."""
    return session.follows is not None and channel in session.follows


def _retrieve(future: asyncio.Future[Any]) -> None:
    """Mark a shared future's exception as seen (each asker gets it; none may be left)."""
    if not future.cancelled():
        future.exception()


def _discard(_: bytes) -> None:
    """Reply sink for n8n messages, which expect no reply."""


def user_ids_valid(user_ids: Iterable[object]) -> bool:
    """Whether every entry can be a user id (publish API validation)."""
    return all(is_valid_user_id(u) for u in user_ids)
