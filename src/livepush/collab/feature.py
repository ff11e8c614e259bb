"""Collaboration as the node sees it: the commands of n8n's editor for rooms, presence,
ephemeral state and locks, the room channels it delivers itself, and what it does when a tab
is replaced, closes, or its state needs renewing (`core/extensions.py`).

    collaboration = Collaboration(node, CollabSettings.for_presence_ttl(30.0))
    node.add(collaboration)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from livepush.collab.locks import TabLocks
from livepush.collab.metrics import CollabMetrics
from livepush.collab.rooms import ROOM_PREFIX, CollabSettings, Rooms
from livepush.collab.tabs import Tabs
from livepush.core.extensions import Feature, Reply
from livepush.core.node import Node
from livepush.core.session import Session
from livepush.protocol.commands import (
    Ephemeral,
    NodeLockReleased,
    NodeLockRequested,
    PresenceUpdate,
    WorkflowClosed,
    WorkflowOpened,
    WriteAccessHeartbeat,
    WriteAccessReleaseRequested,
    WriteAccessRequested,
)
from livepush.protocol.envelope import control_message
from livepush.protocol.errors import ErrorCode, ProtocolError

log = logging.getLogger(__name__)


class Collaboration(Feature):
    """Collaboration rooms (`collab/rooms.py`) and tab locks (`collab/locks.py`) of a node."""

    name = "collaboration"

    def __init__(self, node: Node, settings: CollabSettings | None = None) -> None:
        super().__init__()
        self.node = node
        self.settings = settings or CollabSettings.for_presence_ttl(node.settings.presence_ttl)
        self.metrics = CollabMetrics(node.metrics.registry)
        self.tabs = Tabs()
        self.rooms = Rooms(node, self.tabs, self.metrics, self.settings)
        self.locks = TabLocks(node, self.tabs, self.rooms, self.settings)
        self._poll: asyncio.Task[None] | None = None
        self.commands = {
            "workflowOpened": self._workflow_opened,
            "workflowClosed": self._workflow_closed,
            "presenceUpdate": self._presence_update,
            "ephemeral": self._ephemeral,
            "writeAccessRequested": self._write_access,
            "writeAccessHeartbeat": self._write_access,
            "writeAccessReleaseRequested": self._write_access_release,
            "nodeLockRequested": self._node_lock,
            "nodeLockReleased": self._node_unlock,
        }
        self.lossy_commands = frozenset({"ephemeral"})
        self.channels = {ROOM_PREFIX: self.rooms.on_publication}
        # node locks are announced in `workflow:<id>`; the rooms follow them to notice ends
        self.taps = {
            "nodeLocked": self.rooms.observe_lock,
            "nodeUnlocked": self.rooms.observe_lock,
        }

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Start re-reading the rooms now and then (dead nodes' tabs and locks)."""
        self._poll = asyncio.get_running_loop().create_task(self.rooms.poll())

    async def close(self) -> None:
        """Stop the poll."""
        if self._poll is not None:
            self._poll.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poll
            self._poll = None

    def session_replaced(self, previous: Session, session: Session) -> None:
        """The same tab reconnected: it stays in its rooms."""
        self.rooms.transfer(previous, session)

    async def session_closed(self, session: Session) -> None:
        """A closed tab leaves its rooms and lets go of its locks (a lock lives as long as
        its holder's presence)."""
        tab = self.tabs.get(session)
        if tab is None:
            return
        if tab.rooms:
            try:
                await self.rooms.leave_all(session)
            except Exception as exc:  # (its entries lapse by themselves after member_ttl)
                log.warning("leaving the rooms of %r failed: %s", session, exc)
        for name in list(tab.locks):
            try:
                await self.locks.release(session, name)
            except Exception as exc:  # (it expires by itself after lock_ttl)
                log.warning("releasing %s of %r failed: %s", name, session, exc)
        self.tabs.forget(session)

    async def renew(self, sessions: list[Session]) -> None:
        """Renew the tabs' room entries and locks."""
        members = self.rooms.renewals(sessions)
        if members:
            await self.node.presence.join_many(members, self.settings.member_ttl)
        await self.locks.renew(sessions)

    # -- commands ----------------------------------------------------------------------------

    async def _workflow_opened(
        self, session: Session, command: WorkflowOpened, reply: Reply
    ) -> None:
        """n8n's `workflowOpened`: subscribe the tab to `workflow:<id>` and make it a
        collaborator of the workflow's room."""
        rid = command.id
        channel = f"workflow:{command.workflowId}"
        if channel not in session.channels or rid is not None:
            # (already subscribed: answered like a repeated subscribe, if it has an id)
            await self.node.subscriptions.subscribe(
                session, channel, None, reply if rid is not None else _discard, rid
            )
        if channel in session.channels:
            await self.rooms.join(session, command.workflowId, command.state)

    async def _workflow_closed(
        self, session: Session, command: WorkflowClosed, reply: Reply
    ) -> None:
        """n8n's `workflowClosed`: the tab leaves the workflow's room, lets go of its locks
        there (as n8n does with the write lock) and unsubscribes from `workflow:<id>`."""
        workflow_id = command.workflowId
        await self.rooms.leave(session, workflow_id)
        await self.locks.release_workflow(session, workflow_id)
        await self.node.subscriptions.unsubscribe(session, f"workflow:{workflow_id}")
        if command.id is not None:
            reply(control_message("reply", {}, command.id))

    async def _presence_update(
        self, session: Session, command: PresenceUpdate, reply: Reply
    ) -> None:
        await self.rooms.update(session, command.workflowId, command.state)
        if command.id is not None:
            reply(control_message("reply", {"workflowId": command.workflowId}, command.id))

    async def _ephemeral(self, session: Session, command: Ephemeral, reply: Reply) -> None:
        # cursors and the like have their own rate limit, over which they are dropped
        # without a word (a mouse fires many moves; the next one supersedes them)
        if self.rooms.ephemeral_allowed(session):
            self.rooms.ephemeral(session, command.workflowId, command.kind, command.data)

    async def _write_access(
        self,
        session: Session,
        command: WriteAccessRequested | WriteAccessHeartbeat,
        reply: Reply,
    ) -> None:
        await self.locks.write_access(
            session,
            command.workflowId,
            reply,
            command.id,
            force=isinstance(command, WriteAccessRequested) and command.force,
            renew_only=isinstance(command, WriteAccessHeartbeat),
        )

    async def _write_access_release(
        self, session: Session, command: WriteAccessReleaseRequested, reply: Reply
    ) -> None:
        released = await self.locks.release(session, f"workflow:{command.workflowId}")
        if command.id is not None:
            if not released:
                raise ProtocolError(
                    ErrorCode.LOCK_NOT_HELD, "this tab does not hold the write lock"
                )
            reply(control_message("reply", {"workflowId": command.workflowId}, command.id))

    async def _node_lock(self, session: Session, command: NodeLockRequested, reply: Reply) -> None:
        await self.locks.node_lock(
            session, command.workflowId, command.nodeId, reply, command.id, force=command.force
        )

    async def _node_unlock(self, session: Session, command: NodeLockReleased, reply: Reply) -> None:
        name = f"node:{command.workflowId}:{command.nodeId}"
        if not await self.locks.release(session, name):
            raise ProtocolError(
                ErrorCode.LOCK_NOT_HELD, f"this tab does not hold the lock of {name!r}"
            )
        if command.id is not None:
            reply(control_message("reply", {"workflowId": command.workflowId}, command.id))


def _discard(_: bytes) -> None:
    """Reply sink for n8n messages, which expect no reply."""
