"""The node: one livepush server process, the hub features plug into. It holds the sessions,
routes what the broker delivers to them, publishes (validate, encode once, broker), and runs
their commands; collaboration, executions and CRDT documents are features added with `add`
(`core/extensions.py`), and `core` imports none of them.

One message, publisher to browser: `Node.publish` -> `Broker.publish` (offset, history) ->
`Node._on_publication` -> `Hub.fan_out` -> `Session.deliver` -> transport.

The node's parts, one module each: `subscriptions.py` (joining with recovery, following,
authorization), `commands.py` (client messages), `timers.py` (token expiry, keep-alive,
renewal), `hub.py` (local routing), `session.py` (one connection's queue).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Coroutine, Iterable
from dataclasses import dataclass
from typing import Any

import msgspec

from livepush.auth.policy import AuthorizationPolicy, ClaimsPolicy
from livepush.auth.tokens import Identity, TokenVerifier
from livepush.core.commands import Commands
from livepush.core.extensions import (
    DeliveryObserver,
    Feature,
    Prepared,
    Preparer,
    PublicationHandler,
)
from livepush.core.hub import Hub, own_channels
from livepush.core.metrics import Metrics
from livepush.core.session import FrameWriter, Session, SessionLimits
from livepush.core.subscriptions import Joined, Subscriptions, followed
from livepush.core.timers import Timers
from livepush.engines.base import Engine
from livepush.protocol import PROTOCOL_VERSION
from livepush.protocol.catalogue import metric_label
from livepush.protocol.channels import SYSTEM, parse_channel, push_channel, user_channel
from livepush.protocol.envelope import (
    Priority,
    Publication,
    StreamPosition,
    control_message,
    new_publication,
)
from livepush.protocol.errors import CloseCode, ErrorCode, ProtocolError

log = logging.getLogger(__name__)


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


class Node:
    """A livepush server process: sessions, routing, publishing and commands."""

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
        self.engine = engine
        self.broker = engine.broker
        self.presence = engine.presence
        self.verifier = verifier
        self.policy: AuthorizationPolicy = policy or ClaimsPolicy()
        self.settings = settings or NodeSettings()
        self.limits = limits or SessionLimits()
        self.metrics = metrics or Metrics()
        self.hub = Hub(flush_passes=self.settings.flush_passes)
        self.subscriptions = Subscriptions(self)
        self.commands = Commands(self)
        self.timers = Timers(self)
        self.draining = False
        #: The features added, in order (`add`).
        self.features: list[Feature] = []
        self._routes: tuple[tuple[str, PublicationHandler], ...] = ()
        self._taps: dict[str, PublicationHandler] = {}
        self._observers: dict[str, DeliveryObserver] = {}
        self._publishers: dict[str, Preparer] = {}
        self._drained = asyncio.Event()
        self._background: set[asyncio.Task[None]] = set()
        self.hub.observer = self._observe
        self.broker.set_handler(self._on_publication)
        self.broker.set_reset_handler(self.subscriptions.reset)
        self.broker.set_command_handler(self.commands.run_local)

    def add(self, feature: Feature) -> None:
        """Plug a feature in: its commands, authorizers, publishing paths, channels, taps,
        observers and hooks (`core/extensions.py`). Before `start`."""
        for command_type, handler in feature.commands.items():
            self.commands.register(
                command_type, handler, lossy=command_type in feature.lossy_commands
            )
        for kind, authorizer in feature.authorizers.items():
            self.subscriptions.add_authorizer(kind, authorizer)
        for kind, preparer in feature.publishers.items():
            if kind in self._publishers:
                raise ValueError(f"channels of kind {kind!r} already have a publishing path")
            self._publishers[kind] = preparer
        self._routes += tuple(feature.channels.items())
        for message_type, tap in feature.taps.items():
            self._taps[message_type] = _chain(self._taps.get(message_type), tap)
        for message_type, observer in feature.observers.items():
            if message_type in self._observers:
                raise ValueError(f"{message_type!r} already has an observer")
            self._observers[message_type] = observer
        self.hub.watched = frozenset(self._observers)
        self.features.append(feature)

    async def start(self) -> None:
        """Start the engine, the features and the node's timers."""
        engine = self.engine
        await engine.broker.start()
        await engine.presence.start()
        await engine.executions.start()
        await engine.locks.start()
        for feature in self.features:
            await feature.start()
        self.timers.start()

    async def close(self) -> None:
        """Stop the timers, the features, the engine and the policy's resources."""
        await self.timers.stop()
        for feature in reversed(self.features):
            await feature.close()
        for job in list(self._background):
            job.cancel()
        await self.engine.executions.close()
        await self.engine.locks.close()
        await self.policy.close()
        await self.presence.close()
        await self.broker.close()

    @property
    def ready(self) -> bool:
        """Whether this node should receive new connections."""
        return not self.draining and self.broker.ready

    def spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        """Run background work owned by the node (cancelled when it closes)."""
        task = asyncio.get_running_loop().create_task(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # -- publishing --------------------------------------------------------------------------

    def prepare(
        self,
        channel: str,
        message_type: str,
        data: dict[str, Any] | bytes,
        *,
        priority: Priority = Priority.RELIABLE,
        key: str | None = None,
    ) -> Publication | Prepared:
        """Check and encode one message for one channel, without publishing it (a batch is
        checked whole before anything is published); raises `ProtocolError`. `data` is a dict
        or the JSON bytes of an object (see `new_publication`). A feature's channel kind may
        take it on its own publishing path (execution events into `execution:<id>`)."""
        kind, _ = parse_channel(channel)
        preparer = self._publishers.get(kind)
        if preparer is not None:
            prepared = preparer(channel, message_type, data, priority, key)
            if prepared is not None:
                return prepared
        return new_publication(
            channel,
            message_type,
            data,
            priority=priority,
            key=key,
            max_bytes=self.settings.max_publish_bytes,
        )

    async def publish_prepared(self, prepared: Publication | Prepared) -> Publication:
        """Publish what `prepare` returned; returns it placed at its stream position."""
        if isinstance(prepared, Publication):
            placed = await self.broker.publish(prepared)
        else:
            placed = await prepared.place()
        self.metrics.publications.labels(metric_label(prepared.type)).inc()
        return placed

    async def publish(
        self,
        channel: str,
        message_type: str,
        data: dict[str, Any] | bytes,
        *,
        priority: Priority = Priority.RELIABLE,
        key: str | None = None,
    ) -> Publication:
        """Publish one message to one channel; returns it placed at its stream position."""
        prepared = self.prepare(channel, message_type, data, priority=priority, key=key)
        return await self.publish_prepared(prepared)

    async def announce(self, channel: str, message_type: str, data: dict[str, Any]) -> None:
        """Publish a message of the server's own (its type may be reserved to the server)."""
        await self.publish_prepared(Publication(channel, message_type, msgspec.json.encode(data)))

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

    # -- routing -----------------------------------------------------------------------------

    def _on_publication(self, publication: Publication) -> None:
        channel = publication.channel
        for prefix, route in self._routes:
            if channel.startswith(prefix):
                route(publication)  # a feature's own channel: it delivers it
                return
        tap = self._taps.get(publication.type)
        if tap is not None:
            tap(publication)  # (and delivered, below)
        recipients = self.hub.fan_out(publication)
        self.metrics.fanned_out(publication, recipients)

    def _observe(self, session: Session, publication: Publication) -> None:
        """A session was handed a publication a feature watches."""
        observer = self._observers.get(publication.type)
        if observer is not None:
            observer(session, publication)

    def observe_delivered(self, session: Session, delivered: list[Publication]) -> None:
        """Tell the features about the publications they watch among those just handed to a
        session from history (live ones are told by the hub)."""
        for publication in delivered:
            if publication.type in self.hub.watched:
                self._observe(session, publication)

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
            for feature in self.features:
                feature.session_replaced(previous, session)
            previous.close(
                CloseCode.REPLACED, "replaced by a newer connection with the same pushRef"
            )
        self.metrics.connections.labels(writer.transport).inc()
        self.metrics.connections_total.labels(writer.transport).inc()
        self.timers.schedule_expiry(session)
        resume = resume or {}
        wanted = own + [c for c in dict.fromkeys((*channels, *resume)) if c not in own]
        joined: list[Joined] = []
        refused: list[dict[str, Any]] = []
        subscriptions = self.subscriptions
        for channel in wanted:
            try:
                if channel in own:
                    joined.append(
                        await subscriptions.join(session, channel, resume.get(channel), own=True)
                    )
                    continue
                joined.append(
                    await subscriptions.join_checked(session, channel, resume.get(channel))
                )
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
            subscriptions.release(session, j)
        return session

    async def close_session(self, session: Session) -> None:
        """Unregister a connection whose transport has ended."""
        self.timers.cancel(session)
        session.closed = True
        reason = session.close_code.name.lower() if session.close_code else "client_closed"
        self.metrics.disconnects.labels(reason).inc()
        self.metrics.connections.labels(session.writer.transport).dec()
        for feature in self.features:
            try:
                await feature.session_closed(session)
            except Exception:  # (what it held lapses by itself in the engine)
                log.exception("%s: closing %r failed", feature.name, session)
        if self.hub.session(session.push_ref) is session:
            await self._forget(session)
            await self.presence.release(
                f"pushref:{session.push_ref}", session.user_id, self.settings.push_ref_ttl
            )
        if self.draining and not len(self.hub):
            self._drained.set()

    async def _forget(self, session: Session) -> None:
        subscriptions = len(session.channels) + len(own_channels(session))
        explicit = [c for c in session.channels if not followed(session, c)]
        for channel in self.hub.remove(session):
            await self.broker.unsubscribe(channel)
        if self.settings.presence and explicit:
            await self.presence.leave_many([(c, session.push_ref) for c in explicit])
        self.metrics.subscriptions.dec(subscriptions)
        self.metrics.channels.set(self.hub.channel_count)

    def session(self, push_ref: str) -> Session | None:
        """The local session of a pushRef."""
        return self.hub.session(push_ref)

    def refresh(self, session: Session, token: str) -> Identity:
        """Swap a session's token for a fresh one of the same user."""
        identity = self.verifier.verify(token)
        if identity.user_id != session.user_id:
            raise ProtocolError(
                ErrorCode.TOKEN_USER_MISMATCH, "a refreshed token must belong to the same user"
            )
        session.identity = identity
        session.warned = False
        self.timers.schedule_expiry(session)
        return identity

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


def _chain(first: PublicationHandler | None, second: PublicationHandler) -> PublicationHandler:
    """Two taps of one publication type, in the order they were added."""
    if first is None:
        return second

    def both(publication: Publication) -> None:
        first(publication)
        second(publication)

    return both
