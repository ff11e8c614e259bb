"""Collaboration rooms: who is editing a workflow, and what their cursors are doing, the same
on every node of a cluster.

A room is `collab:<workflowId>`. Its members are the tabs that opened the workflow
(`workflowOpened`, n8n's message). Watching `workflow:<id>` alone (an API consumer, a
dashboard) does not make anyone a collaborator, and the room's traffic never enters the
workflow's stream or history.

**Presence** (user > tabs > state). Each tab's entry lives in the engine's presence store under
the room (key: the tab's pushRef; value: the user's profile, the tab's state such as its
selected node, open panel and active/idle status, and when it last changed), renewed with the
node's other presence. A tab that closes leaves at once; a dead node's tabs lapse within
`member_ttl`. A change is announced to every node by a signal (an ephemeral publication in the
room's channel that no client receives). A node with editors in the room then reads the
members, at most once per `flush_interval`, and when the list changed sends it to its editors
as n8n's `collaboratorsChanged` (one encoding for all of them, and at most one message per
room per interval however many people join). Nodes also re-read every `poll_interval`: that
is how the lapse of a dead node's tabs is noticed.

**Ephemeral state** (cursor, selection, typing, viewport, any short `kind`). A tab's updates are
kept per (tab, kind), the latest replacing the previous, and sent every `tick` as one batch
per room per node (`collabEphemeral`) through the engine to the editors of every node.
Ephemeral publications are never stored, and a connection that falls behind drops them before
anything else.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final

import msgspec

from livepush.collab.metrics import CollabMetrics
from livepush.collab.tabs import Tabs
from livepush.core.ratelimit import TokenBucket
from livepush.protocol.envelope import Priority, Publication
from livepush.protocol.errors import ErrorCode, ProtocolError

if TYPE_CHECKING:
    from livepush.core.node import Node
    from livepush.core.session import Session

log = logging.getLogger(__name__)

#: Channel prefix of collaboration rooms.
ROOM_PREFIX: Final = "collab:"
#: Internal publication type telling every node a room's presence changed (never delivered).
SIGNAL: Final = "collabSignal"
#: Batched ephemeral updates of one node's tabs in one room.
EPHEMERAL: Final = "collabEphemeral"
#: n8n's presence message.
COLLABORATORS: Final = "collaboratorsChanged"

_KIND = re.compile(r"[A-Za-z][A-Za-z0-9_\-]{0,31}")
_encode = msgspec.json.encode
_SIGNAL_DATA: Final = b"{}"


@dataclass(frozen=True, slots=True)
class CollabSettings:
    """Timing and size limits of collaboration rooms."""

    #: At most one `collaboratorsChanged` per room per this many seconds.
    flush_interval: float = 0.25
    #: Ephemeral updates are coalesced (latest per tab and kind) and sent this often.
    tick: float = 0.05
    #: A tab's presence entry outlives its node's last renewal by this long.
    member_ttl: float = 25.0
    #: Each node re-reads the members of its rooms this often (notices dead nodes' tabs).
    poll_interval: float = 2.5
    #: Largest tab state (`presenceUpdate`), encoded.
    max_state_bytes: int = 1024
    #: Largest ephemeral update value, encoded.
    max_ephemeral_bytes: int = 2048
    #: Ephemeral updates (cursors...) per second per tab: over it they are dropped, never
    #: answered nor held against the connection. A mouse can fire 1000 moves a second, and
    #: coalescing (latest per tab and kind per tick) already bounds what others receive; this
    #: bounds what a flood costs the server.
    ephemeral_rate: float = 1000.0
    ephemeral_burst: float = 2000.0
    #: A lock lapses this long after its holder's node stopped renewing it (node died).
    lock_ttl: float = 30.0
    #: A lock its tab has not asked for or confirmed (heartbeat) for this long is released,
    #: even if the tab stays connected (a frozen or forgotten tab); n8n's `writeLockTtl`.
    lock_idle_ttl: float = 120.0

    @classmethod
    def for_presence_ttl(cls, presence_ttl: float, **kwargs: Any) -> CollabSettings:
        """Settings whose dead-node detection fits in `presence_ttl`: entries live 5/6 of it
        and are polled every 1/12 of it (30 s: 25 s and 2.5 s); locks live as long as
        presence."""
        return cls(
            member_ttl=presence_ttl * 5 / 6,
            poll_interval=presence_ttl / 12,
            lock_ttl=presence_ttl,
            **kwargs,
        )


def room_channel(workflow_id: str) -> str:
    """The room channel of a workflow."""
    return ROOM_PREFIX + workflow_id


def validate_kind(kind: str) -> str:
    """An ephemeral kind: a letter, then up to 31 of A-Z a-z 0-9 _ -."""
    if not _KIND.fullmatch(kind):
        raise ProtocolError(
            ErrorCode.INVALID_MESSAGE,
            "kind must be a letter followed by up to 31 of A-Z a-z 0-9 _ -",
        )
    return kind


def iso_now() -> str:
    """The current UTC time as n8n writes it (ISO 8601, milliseconds, `Z`)."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def collaborators(workflow_id: str, members: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """n8n's `collaboratorsChanged` data from a room's presence entries: one collaborator per
    user (`user`, `lastSeen`: n8n's fields), with livepush's `tabs` (each tab's `clientId`,
    `state` and `lastSeen`) added. Users and tabs are in a stable order."""
    users: dict[str, dict[str, Any]] = {}
    for client_id, info in sorted(members.items()):
        user = info.get("user")
        if not isinstance(user, dict) or not isinstance(user.get("id"), str):
            continue
        seen = str(info.get("lastSeen", ""))
        entry = users.get(user["id"])
        if entry is None:
            entry = users[user["id"]] = {"user": user, "lastSeen": seen, "tabs": []}
        elif seen > entry["lastSeen"]:
            entry["lastSeen"] = seen
        entry["tabs"].append(
            {"clientId": client_id, "state": info.get("state", {}), "lastSeen": seen}
        )
    return {"workflowId": workflow_id, "collaborators": [users[u] for u in sorted(users)]}


class Room:
    """One room on one node: its local editors and the state of its batching."""

    __slots__ = (
        "channel",
        "dirty",
        "editors",
        "flush_handle",
        "flushing",
        "last_flush",
        "lock_token",
        "node_locks",
        "pending",
        "publishing",
        "sent",
        "tick_handle",
        "workflow_id",
    )

    def __init__(self, workflow_id: str) -> None:
        self.workflow_id = workflow_id
        self.channel = room_channel(workflow_id)
        self.editors: dict[Session, None] = {}
        #: The last `collaboratorsChanged` data sent to this node's editors.
        self.sent: bytes | None = None
        self.flush_handle: asyncio.TimerHandle | None = None
        self.flushing = False
        self.dirty = False
        self.last_flush = 0.0
        #: Ephemeral updates of this node's tabs waiting for the next tick, per (tab, kind).
        self.pending: dict[tuple[str, str], bytes] = {}
        self.tick_handle: asyncio.TimerHandle | None = None
        #: A batch is on its way to the engine (the next waits: batches stay in order).
        self.publishing = False
        #: The fencing token of the workflow's write lock when last read (None: free).
        self.lock_token: int | None = None
        #: The workflow's node locks as announced (`nodeLocked`): node id -> fencing token.
        self.node_locks: dict[str, int] = {}


#: How long the claim to announce one lock's end is kept (only one node announces it).
_ANNOUNCED_TTL: Final = 300.0


def ended_claim(lock: str, token: int) -> str:
    """The presence-store claim that the end of the lock's grant `token` was announced."""
    return f"ended:{lock}:{token}"


class Rooms:
    """The collaboration rooms of one node."""

    def __init__(
        self, node: Node, tabs: Tabs, metrics: CollabMetrics, settings: CollabSettings
    ) -> None:
        self.broker = node.broker
        self.presence = node.presence
        self.locks = node.engine.locks
        self.hub = node.hub
        self._announce = node.announce
        self._spawn = node.spawn
        self.tabs = tabs
        #: Owner of this node's claims in the presence store.
        self.node_id = uuid.uuid4().hex[:12]
        self.metrics = metrics
        self.settings = settings
        self.rooms: dict[str, Room] = {}

    # -- membership --------------------------------------------------------------------------

    async def join(
        self, session: Session, workflow_id: str, state: dict[str, Any] | None = None
    ) -> None:
        """Make the tab a collaborator of the workflow (again: refreshes its state)."""
        checked = None if state is None else self._checked_state(state)
        room = self.rooms.get(workflow_id)
        if room is None:
            room = self.rooms[workflow_id] = Room(workflow_id)
            try:
                await self.broker.subscribe(room.channel)
            except BaseException:
                if self.rooms.get(workflow_id) is room and not room.editors:
                    del self.rooms[workflow_id]
                raise
            self.metrics.rooms.set(len(self.rooms))
        if session.closed:  # (it closed meanwhile: its close found no room to leave)
            if not room.editors and self.rooms.get(workflow_id) is room:
                await self._drop(room)
            return
        rooms = self.tabs.of(session).rooms
        info = rooms.get(workflow_id)
        if info is None:
            info = rooms[workflow_id] = {"user": _user(session), "state": {}}
        if checked is not None:
            info["state"] = checked
        info["lastSeen"] = iso_now()
        room.editors[session] = None
        await self.presence.join(room.channel, session.push_ref, info, self.settings.member_ttl)
        await self._signal(room)

    async def update(self, session: Session, workflow_id: str, state: dict[str, Any]) -> None:
        """Change the tab's state in a room it is in (selected node, open panel, status)."""
        if workflow_id not in self.tabs.rooms(session):
            raise ProtocolError(
                ErrorCode.NOT_SUBSCRIBED, f"open workflow {workflow_id!r} first (workflowOpened)"
            )
        await self.join(session, workflow_id, state)

    async def leave(self, session: Session, workflow_id: str) -> bool:
        """The tab is no longer a collaborator; False when it was not one."""
        if self.tabs.rooms(session).pop(workflow_id, None) is None:
            return False
        room = self.rooms.get(workflow_id)
        if room is None:
            return True
        room.editors.pop(session, None)
        # a reconnect under the same pushRef may already have joined again: its entry stays
        if self.hub.session(session.push_ref) in (session, None):
            await self.presence.leave(room.channel, session.push_ref)
        if not room.editors and self.rooms.get(workflow_id) is room:
            await self._drop(room)
        await self._signal(room)
        return True

    def transfer(self, previous: Session, session: Session) -> None:
        """A reconnect under the same pushRef replaced `previous`: the new connection is the
        same tab, and stays in its rooms (its entries are the same)."""
        before = self.tabs.get(previous)
        if before is None or not before.rooms:
            return
        rooms, before.rooms = before.rooms, {}
        after = self.tabs.of(session)
        after.rooms = {**rooms, **after.rooms}
        for workflow_id in rooms:
            room = self.rooms.get(workflow_id)
            if room is not None:
                room.editors.pop(previous, None)
                room.editors[session] = None

    async def leave_all(self, session: Session) -> None:
        """A closed tab leaves all its rooms at once."""
        for workflow_id in list(self.tabs.rooms(session)):
            await self.leave(session, workflow_id)

    async def _drop(self, room: Room) -> None:
        """Forget a room with no local editor left. The engine subscription ends before any
        other join can run (an unsubscribe left for later could end a new room's)."""
        del self.rooms[room.workflow_id]
        for handle in (room.flush_handle, room.tick_handle):
            if handle is not None:
                handle.cancel()
        if room.pending:
            self._send_tick(room)
        self.metrics.rooms.set(len(self.rooms))
        await self.broker.unsubscribe(room.channel)

    def renewals(self, sessions: Iterable[Session]) -> list[tuple[str, str, dict[str, Any]]]:
        """The presence entries of these sessions' rooms (renewed by the node)."""
        return [
            (room_channel(workflow_id), session.push_ref, info)
            for session, tab in self.tabs.among(sessions)
            for workflow_id, info in tab.rooms.items()
        ]

    def _checked_state(self, state: dict[str, Any]) -> dict[str, Any]:
        if len(_encode(state)) > self.settings.max_state_bytes:
            raise ProtocolError(
                ErrorCode.PAYLOAD_TOO_LARGE,
                f"tab state over {self.settings.max_state_bytes} bytes",
            )
        return state

    async def members(self, workflow_id: str) -> dict[str, Any]:
        """The room's collaborators, cluster-wide (as `collaboratorsChanged` has them)."""
        return collaborators(workflow_id, await self.presence.members(room_channel(workflow_id)))

    # -- presence broadcast ------------------------------------------------------------------

    async def _signal(self, room: Room) -> None:
        """Tell every node (this one included) that the room's presence changed."""
        await self.broker.publish(
            Publication(room.channel, SIGNAL, _SIGNAL_DATA, priority=Priority.EPHEMERAL)
        )

    def on_publication(self, publication: Publication) -> None:
        """A room publication from the engine (any node's)."""
        room = self.rooms.get(publication.channel[len(ROOM_PREFIX) :])
        if room is None:
            return
        if publication.type == SIGNAL:
            self._schedule(room)
        elif publication.type == EPHEMERAL:
            editors = tuple(room.editors)
            self.hub.deliver(editors, publication)
            self.metrics.ephemeral_delivered.inc(len(editors))

    def _schedule(self, room: Room) -> None:
        if room.flush_handle is not None or room.flushing:
            room.dirty = True
            return
        delay = max(0.0, room.last_flush + self.settings.flush_interval - time.monotonic())
        room.flush_handle = asyncio.get_running_loop().call_later(delay, self._start_flush, room)

    def _start_flush(self, room: Room) -> None:
        room.flush_handle = None
        if self.rooms.get(room.workflow_id) is not room:
            return
        room.flushing = True
        room.dirty = False
        self._spawn(self._flush(room))

    async def _flush(self, room: Room) -> None:
        try:
            try:
                members = await self.presence.members(room.channel)
            except Exception as exc:  # retried at the next poll
                log.warning("reading the members of %s failed: %r", room.channel, exc)
                return
            data = _encode(collaborators(room.workflow_id, members))
            if data != room.sent and room.editors:
                room.sent = data
                publication = Publication(
                    room.channel, COLLABORATORS, data, priority=Priority.EPHEMERAL, key="presence"
                )
                self.hub.deliver(tuple(room.editors), publication)
                self.metrics.presence_sent.inc(len(room.editors))
        finally:
            room.flushing = False
            room.last_flush = time.monotonic()
            if room.dirty:
                self._schedule(room)

    async def _watch_locks(self, room: Room) -> None:
        """Announce the end of the workflow's write lock (`writeAccessReleased`) or of one of
        its node locks (`nodeUnlocked`) that ended without a release (its holder's node died,
        or the holder stopped renewing it): once, by whichever node notices first. A released
        lock is claimed as announced by the releasing node."""
        workflow_id = room.workflow_id
        lock = f"workflow:{workflow_id}"
        try:
            grant = await self.locks.holder(lock)
            previous, room.lock_token = room.lock_token, None if grant is None else grant.token
            if (
                previous is not None
                and grant is None
                and await self.claim_lock_end(lock, previous, noticed=True)
            ):
                await self._announce(lock, "writeAccessReleased", {"workflowId": workflow_id})
            for node_id, token in list(room.node_locks.items()):
                name = f"node:{workflow_id}:{node_id}"
                grant = await self.locks.holder(name)
                if grant is not None and grant.token == token:
                    continue
                if room.node_locks.get(node_id) == token:
                    del room.node_locks[node_id]
                if grant is None and await self.claim_lock_end(name, token, noticed=True):
                    await self._announce(
                        lock, "nodeUnlocked", {"workflowId": workflow_id, "nodeId": node_id}
                    )
        except Exception as exc:  # read again at the next poll
            log.warning("watching the locks of %s failed: %r", room.channel, exc)

    def observe_lock(self, publication: Publication) -> None:
        """A node lock's grant or release announced in `workflow:<id>` (any node's)."""
        room = self.rooms.get(publication.channel[len("workflow:") :])
        if room is None:
            return
        try:
            data = msgspec.json.decode(publication.data)
            node_id = data["nodeId"]
            if publication.type == "nodeLocked":
                room.node_locks[node_id] = int(data["fencingToken"])
            else:
                room.node_locks.pop(node_id, None)
        except (msgspec.DecodeError, KeyError, TypeError, ValueError):
            log.warning("unreadable %s in %s", publication.type, publication.channel)

    async def claim_lock_end(self, lock: str, token: int, *, noticed: bool = False) -> bool:
        """True for the one node that may announce the end of this grant: the node that
        released it, or the first to notice it lapsed (`noticed`; a node's releases and
        notices claim under different owners, so it never announces one end twice)."""
        owner = self.node_id if noticed else f"{self.node_id}:released"
        return await self.presence.claim(ended_claim(lock, token), owner, _ANNOUNCED_TTL)

    async def poll(self) -> None:
        """Re-read every local room now and then: a dead node's tabs and locks lapse without
        a signal."""
        while True:
            await asyncio.sleep(self.settings.poll_interval)
            rooms = list(self.rooms.values())
            for room in rooms:
                self._schedule(room)
            for room in rooms:
                if self.rooms.get(room.workflow_id) is room:
                    await self._watch_locks(room)

    # -- ephemeral state ---------------------------------------------------------------------

    def ephemeral_allowed(self, session: Session) -> bool:
        """Whether the tab's ephemeral update fits its rate limit (else it is dropped, with
        no answer: the next one supersedes it)."""
        tab = self.tabs.of(session)
        bucket = tab.ephemeral_rate
        if bucket is None:
            settings = self.settings
            bucket = tab.ephemeral_rate = TokenBucket(
                settings.ephemeral_rate, settings.ephemeral_burst
            )
        if bucket.try_take():
            return True
        self.metrics.ephemeral_limited.inc()
        return False

    def ephemeral(self, session: Session, workflow_id: str, kind: str, data: Any) -> None:
        """Keep the tab's latest value of `kind`; it goes out with the room's next tick."""
        room = self.rooms.get(workflow_id)
        if room is None or session not in room.editors:
            raise ProtocolError(
                ErrorCode.NOT_SUBSCRIBED, f"open workflow {workflow_id!r} first (workflowOpened)"
            )
        update = _encode(
            {
                "clientId": session.push_ref,
                "userId": session.user_id,
                "kind": validate_kind(kind),
                "data": data,
            }
        )
        if len(update) > self.settings.max_ephemeral_bytes:
            raise ProtocolError(
                ErrorCode.PAYLOAD_TOO_LARGE,
                f"ephemeral update over {self.settings.max_ephemeral_bytes} bytes",
            )
        self.metrics.ephemeral_received.inc()
        key = (session.push_ref, kind)
        if key in room.pending:
            self.metrics.ephemeral_coalesced.inc()
        room.pending[key] = update
        if room.tick_handle is None:
            room.tick_handle = asyncio.get_running_loop().call_later(
                self.settings.tick, self._send_tick, room
            )

    def _send_tick(self, room: Room) -> None:
        room.tick_handle = None
        if not room.pending:
            return
        if room.publishing:
            # the previous batch is still on its way: this one waits (and keeps coalescing)
            room.tick_handle = asyncio.get_running_loop().call_later(
                self.settings.tick, self._send_tick, room
            )
            return
        pending, room.pending = room.pending, {}
        data = b"".join(
            (
                b'{"workflowId":',
                _encode(room.workflow_id),
                b',"updates":[',
                b",".join(pending.values()),
                b"]}",
            )
        )
        room.publishing = True
        self._spawn(
            self._publish(
                room, Publication(room.channel, EPHEMERAL, data, priority=Priority.EPHEMERAL)
            )
        )

    async def _publish(self, room: Room, publication: Publication) -> None:
        try:
            await self.broker.publish(publication)
        except Exception as exc:  # ephemeral: lost, the next tick carries newer values
            log.warning("ephemeral batch of %s lost: %r", room.channel, exc)
        finally:
            room.publishing = False


def _user(session: Session) -> dict[str, str]:
    """n8n's MinimalUser of the session's user (profile fields it lacks are empty)."""
    profile = session.identity.profile
    return {
        "id": session.user_id,
        "email": profile.get("email", ""),
        "firstName": profile.get("firstName", ""),
        "lastName": profile.get("lastName", ""),
    }
