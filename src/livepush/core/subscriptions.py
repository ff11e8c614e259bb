"""Subscriptions: how a session joins a channel with no gap and no duplicate, recovering what
it missed, and how it leaves.

Live publications of a channel are held from the moment the session is in the channel's
fan-out set until the missed ones (read from the broker's history) are out, then released
de-duplicated by offset (`Session.hold` / `Session.release`). Three kinds of subscription:

- a connection's own channels (`push:<pushRef>`, `user:<id>`, `system`), implied by the
  connection (`Node.open_session`);
- explicit ones a client asks for, within its limit and authorized: built-in rules for `push:`
  and `user:`, a feature's authorizer for its channel kinds, the policy for the rest; they
  carry a presence entry;
- server-made ones (`follow`): the node subscribes sessions to a channel on a feature's behalf
  (the followers of an execution), without presence entries, and may end them.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from livepush.core.extensions import Access, ChannelAuthorizer, Reply
from livepush.core.session import Session
from livepush.engines.base import EngineUnavailable, Recovery
from livepush.protocol.channels import parse_channel
from livepush.protocol.envelope import Publication, StreamPosition, control_message, error_message
from livepush.protocol.errors import ErrorCode, ProtocolError

if TYPE_CHECKING:
    from livepush.core.node import Node

log = logging.getLogger(__name__)

#: Tries to follow a channel while the engine fails (0.2 s, 0.4 s... apart).
FOLLOW_ATTEMPTS = 4


@dataclass(slots=True)
class Joined:
    """A session's new subscription, before what it missed has been handed over."""

    channel: str
    position: StreamPosition
    missed: list[Publication]
    recovered: bool | None
    after_offset: int

    @property
    def start(self) -> StreamPosition:
        """Where the client stands once the missed publications are out."""
        return StreamPosition(self.position.epoch, self.after_offset)

    def describe(self) -> dict[str, Any]:
        """The subscription as a reply (and the `connected` greeting) describe it."""
        info: dict[str, Any] = {
            "channel": self.channel,
            "epoch": self.position.epoch,
            "offset": self.position.offset,
        }
        if self.recovered is not None:
            info["recovered"] = self.recovered
            info["missed"] = len(self.missed)
        return info


def followed(session: Session, channel: str) -> bool:
    """Whether the session follows the channel (a server-made subscription, no presence)."""
    return session.follows is not None and channel in session.follows


class Subscriptions:
    """The subscriptions of one node's sessions."""

    def __init__(self, node: Node) -> None:
        self._node = node
        self._authorizers: dict[str, ChannelAuthorizer] = {}
        self._recoveries: dict[tuple[str, str, int], asyncio.Future[Recovery]] = {}

    def add_authorizer(self, kind: str, authorizer: ChannelAuthorizer) -> None:
        """Let a feature decide subscriptions to the channels of `kind`."""
        if kind in self._authorizers or kind in ("push", "user"):
            raise ValueError(f"channels of kind {kind!r} already have an authorizer")
        self._authorizers[kind] = authorizer

    # -- authorization -----------------------------------------------------------------------

    async def authorize(self, session: Session, channel: str) -> Access:
        """The access the session has to a channel; raises `forbidden` when it has none."""
        kind, ident = parse_channel(channel)
        identity = session.identity
        if kind == "push":
            allowed = ident == session.push_ref
        elif kind == "user":
            allowed = ident == identity.user_id or identity.grants.admin
        else:
            authorizer = self._authorizers.get(kind)
            if authorizer is not None:
                return await authorizer(session, ident)
            allowed = await self._node.policy.can_subscribe(identity, kind, ident)
        if not allowed:
            raise ProtocolError(ErrorCode.FORBIDDEN, f"not allowed to subscribe to {channel!r}")
        return Access.SUBSCRIBE

    # -- joining -----------------------------------------------------------------------------

    async def join_checked(
        self,
        session: Session,
        channel: str,
        since: StreamPosition | None,
        *,
        authorized: bool = False,
    ) -> Joined:
        """An explicit subscription: within the connection's limit, and authorized (unless
        the caller has just done so)."""
        limits = self._node.limits
        if len(session.channels) >= limits.max_subscriptions:
            raise ProtocolError(
                ErrorCode.TOO_MANY_SUBSCRIPTIONS,
                f"at most {limits.max_subscriptions} subscriptions per connection",
            )
        access = Access.SUBSCRIBE if authorized else await self.authorize(session, channel)
        follow = access is Access.FOLLOW
        joined = await self.join(session, channel, since, presence=not follow)
        if follow:
            if session.follows is None:
                session.follows = set()
            session.follows.add(channel)
        return joined

    async def join(
        self,
        session: Session,
        channel: str,
        since: StreamPosition | None,
        *,
        own: bool = False,
        presence: bool = True,
    ) -> Joined:
        """Subscribe without checks and read what the session missed since `since`; the
        caller hands it over with `complete`."""
        node = self._node
        # Live publications are held from the moment the session is in the fan-out set (for
        # its own channels: from `Hub.add`) until the missed ones are out, then de-duplicated
        # by offset: no gap, no duplicate.
        session.hold(channel)
        joined = False
        try:
            if not own:
                joined = True
                if node.hub.subscribe(session, channel):
                    node.metrics.channels.set(node.hub.channel_count)
                # every subscriber waits until the broker delivers the channel (the first
                # one's subscription may still be in flight)
                await node.broker.subscribe(channel)
                if node.settings.presence and presence:
                    await node.presence.join(
                        channel,
                        session.push_ref,
                        presence_info(session),
                        node.settings.presence_ttl,
                    )
            if since is None:
                position = await node.broker.position(channel)
                result = Joined(channel, position, [], None, position.offset)
            else:
                if node.broker.remote:
                    recovery = await asyncio.shield(self._recover(channel, since))
                else:  # in process: sharing would only add a loop iteration per session
                    recovery = await node.broker.recover(
                        channel, since, node.settings.recovery_limit
                    )
                node.metrics.recoveries.labels(
                    "recovered" if recovery.recovered else "failed"
                ).inc()
                after = since.offset if recovery.recovered else recovery.position.offset
                result = Joined(
                    channel, recovery.position, recovery.publications, recovery.recovered, after
                )
        except BaseException:
            # (the engine failed, e.g. Redis is down) leave no half subscription behind
            session.abandon(channel)
            if joined and node.hub.unsubscribe(session, channel):
                node.metrics.channels.set(node.hub.channel_count)
                with contextlib.suppress(Exception):
                    await node.broker.unsubscribe(channel)
            raise
        node.metrics.subscriptions.inc()
        return result

    def complete(self, session: Session, joined: Joined) -> None:
        """Record the client's new position and hand over what it missed, then what was held
        meanwhile (features observe what they watch among them)."""
        session.mark({joined.channel: joined.start})
        self.release(session, joined)

    def release(self, session: Session, joined: Joined) -> None:
        """Hand the session what it missed and what was held meanwhile. A remote broker may
        deliver live publications after a history read that included them; the session then
        drops those for a while."""
        node = self._node
        epoch = joined.position.epoch if node.broker.remote else None
        delivered = session.release(joined.channel, joined.missed, joined.after_offset, epoch)
        node.observe_delivered(session, delivered)

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
            self._node.spawn(self._run_recovery(key, since, future))
        return future

    async def _run_recovery(
        self, key: tuple[str, str, int], since: StreamPosition, future: asyncio.Future[Recovery]
    ) -> None:
        if self._recoveries.get(key) is future:
            del self._recoveries[key]  # from now on, askers start a new call
        try:
            recovery = await self._node.broker.recover(
                key[0], since, self._node.settings.recovery_limit
            )
        except BaseException as exc:
            if not future.done():
                future.set_exception(exc)
            if isinstance(exc, asyncio.CancelledError):
                raise
        else:
            if not future.done():
                future.set_result(recovery)

    # -- client subscriptions ----------------------------------------------------------------

    async def subscribe(
        self,
        session: Session,
        channel: str,
        since: StreamPosition | None,
        reply: Reply,
        request_id: Any = None,
    ) -> None:
        """Subscribe a session to a channel, reply, then send what it missed."""
        node = self._node
        if channel in session.channels or node.hub.is_own(session, channel):
            position = await node.broker.position(channel)
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
        joined = await self.join_checked(session, channel, since)
        reply(control_message("reply", joined.describe(), request_id))
        self.complete(session, joined)

    async def unsubscribe(self, session: Session, channel: str) -> bool:
        """Remove a subscription; False when the session was not subscribed."""
        node = self._node
        parse_channel(channel)
        if node.hub.is_own(session, channel):
            raise ProtocolError(
                ErrorCode.FORBIDDEN,
                "a connection cannot leave its own push:, user: or system channel",
            )
        if channel not in session.channels:
            return False
        is_followed = followed(session, channel)
        if is_followed and session.follows is not None:
            session.follows.discard(channel)
        if node.hub.unsubscribe(session, channel):
            await node.broker.unsubscribe(channel)
            node.metrics.channels.set(node.hub.channel_count)
        node.metrics.subscriptions.dec()
        if node.settings.presence and not is_followed:
            await node.presence.leave(channel, session.push_ref)
        session.mark({channel: None})
        return True

    # -- server-made subscriptions -----------------------------------------------------------

    async def follow(self, sessions: Iterable[Session], channel: str, since: StreamPosition) -> int:
        """Subscribe these sessions to a channel from `since`, on a feature's behalf: one
        engine subscription and one history read for all of them (200 watchers of a workflow
        are one batch, not 200 joins). An engine that fails is retried a few times; then the
        clients are told. Returns how many sessions now follow the channel."""
        node = self._node
        try:
            parse_channel(channel)  # (a feature's channel; checked all the same)
        except ProtocolError:
            return 0
        batch = [s for s in dict.fromkeys(sessions) if not s.closed and channel not in s.channels]
        if not batch:
            return 0
        for session in batch:
            if session.follows is None:
                session.follows = set()
            session.follows.add(channel)
            session.hold(channel)
            node.hub.subscribe(session, channel)
        node.metrics.channels.set(node.hub.channel_count)
        recovery: Recovery | None = None
        failure: ProtocolError | None = None
        for attempt in range(FOLLOW_ATTEMPTS):
            try:
                await node.broker.subscribe(channel)
                recovery = await node.broker.recover(channel, since, node.settings.recovery_limit)
                break
            except EngineUnavailable as exc:
                failure = exc
                await asyncio.sleep(0.2 * 2**attempt)
            except Exception:
                log.exception("following %s failed", channel)
                break
        if recovery is None:
            emptied = False
            for session in batch:
                session.abandon(channel)
                if session.follows is not None:
                    session.follows.discard(channel)
                emptied = node.hub.unsubscribe(session, channel) or emptied
                if failure is not None and not session.closed:
                    session.send_control(
                        error_message(failure.code, f"following {channel}: {failure.message}")
                    )
            if emptied:
                node.metrics.channels.set(node.hub.channel_count)
                with contextlib.suppress(Exception):
                    await node.broker.unsubscribe(channel)
            return 0
        node.metrics.subscriptions.inc(len(batch))
        node.metrics.recoveries.labels("recovered" if recovery.recovered else "failed").inc(
            len(batch)
        )
        after = since.offset if recovery.recovered else recovery.position.offset
        joined = Joined(
            channel, recovery.position, recovery.publications, recovery.recovered, after
        )
        reset: bytes | None = None
        if not recovery.recovered:
            # more than the history holds: the clients catch up another way (a snapshot)
            position = recovery.position
            message = {"channel": channel, "epoch": position.epoch, "offset": position.offset}
            reset = control_message("channelReset", message)
        for session in batch:
            if session.closed or channel not in session.channels:
                session.abandon(channel)
                continue
            if reset is not None:
                session.send_control(reset)
            self.complete(session, joined)
        return len(batch)

    async def end_follow(self, session: Session, channel: str, code: str, message: str) -> None:
        """End a server-made subscription and tell the client why (`unsubscribed`)."""
        if session.closed or channel not in session.channels or not followed(session, channel):
            return
        try:
            await self.unsubscribe(session, channel)
        except Exception:
            log.exception("ending %s for %r failed", channel, session)
            return
        session.send_control(
            control_message("unsubscribed", {"channel": channel, "code": code, "message": message})
        )

    async def reauthorize(self, session: Session, code: str, message: str) -> list[str]:
        """Check every subscription of a session again (its identity changed, or access was
        revoked) and end those it may no longer have, each told `unsubscribed` with `code`.
        A check that cannot be made (the authorization callback is down) keeps the
        subscription: it was allowed, and the next check decides. Returns the channels ended."""
        ended: list[str] = []
        for channel in list(session.channels):
            if session.closed:
                break
            try:
                await self.authorize(session, channel)
                continue
            except ProtocolError as exc:
                if exc.code is not ErrorCode.FORBIDDEN:
                    log.warning("re-authorizing %s for %r: %s", channel, session, exc.message)
                    continue
            try:
                if not await self.unsubscribe(session, channel):
                    continue
            except Exception:
                log.exception("ending %s for %r failed", channel, session)
                continue
            ended.append(channel)
            session.send_control(
                control_message(
                    "unsubscribed", {"channel": channel, "code": code, "message": message}
                )
            )
        return ended

    # -- continuity --------------------------------------------------------------------------

    def reset(self, channel: str, position: StreamPosition) -> None:
        """The channel's stream lost continuity (the engine lost history, or publications
        could not be delivered): its subscribers continue from `position` and must refetch
        what the channel describes, as after `recovered: false`."""
        node = self._node
        node.metrics.recoveries.labels("reset").inc()
        message = control_message(
            "channelReset",
            {"channel": channel, "epoch": position.epoch, "offset": position.offset},
        )
        for session in node.hub.recipients(channel):
            session.send_control(message)
            session.mark({channel: position})

    # -- presence ----------------------------------------------------------------------------

    async def members(self, channel: str) -> dict[str, Any]:
        """Who is in a channel, cluster-wide: its connections (pushRef and user) and users."""
        parse_channel(channel)
        members = await self._node.presence.members(channel)
        connections = [
            {"pushRef": push_ref, "userId": info.get("userId")}
            for push_ref, info in sorted(members.items())
        ]
        users = sorted({c["userId"] for c in connections if c["userId"] is not None})
        return {"channel": channel, "connections": connections, "users": users}


def presence_info(session: Session) -> dict[str, Any]:
    """What a connection shows in presence: shared by the connections of one user (an
    in-process presence store keeps it per connection)."""
    return _user_info(session.user_id)


@functools.lru_cache(maxsize=65536)
def _user_info(user_id: str) -> dict[str, Any]:
    return {"userId": user_id}


def _retrieve(future: asyncio.Future[Any]) -> None:
    """Mark a shared future's exception as seen (each asker gets it; none may be left)."""
    if not future.cancelled():
        future.exception()
