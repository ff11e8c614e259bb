"""Locks with fencing tokens: n8n's workflow write lock and single-node locks, held by tabs,
and the check a save handler makes.

The engine grants locks atomically (`engines/base.py`, `LockStore`); here are the rules around
it. A tab takes a lock with a command (`writeAccessRequested`, `nodeLockRequested`; `force`
takes it from the same user's other tab), the workflow's watchers are told of each new grant
(`writeAccessAcquired`, `nodeLocked`, with the fencing token) and of its end
(`writeAccessReleased`, `nodeUnlocked`). A lock lives as long as its holder: it is renewed
with the node's presence, released when the tab or the workflow closes, and released when its
tab has not confirmed it (`writeAccessHeartbeat`) for `lock_idle_ttl`. A lock whose holder's
node died ends by itself; the rooms announce that (`collab/rooms.py`).

A save endpoint checks the token it was given:

    if not await check_lock(locks, "workflow:42", token):
        raise Conflict("your write lock expired or was taken over; reload")

or over HTTP: `POST /api/v1/locks/check` with `{"lock": "workflow:42", "token": 17}`.
"""

from __future__ import annotations

import re
import time
from typing import TYPE_CHECKING, Any

from livepush.collab.rooms import CollabSettings, Rooms
from livepush.collab.tabs import Tabs
from livepush.core.extensions import Reply
from livepush.core.session import Session
from livepush.engines.base import LockStore
from livepush.protocol.envelope import control_message, error_message
from livepush.protocol.errors import ErrorCode, ProtocolError

if TYPE_CHECKING:
    from livepush.core.node import Node

_NAME = re.compile(r"[A-Za-z0-9_.@=+:\-]{1,256}")


def validate_lock_name(name: object) -> str:
    """A lock name: 1-256 of A-Z a-z 0-9 _ . @ = + : - (`workflow:42`, `node:42:Set`)."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ProtocolError(
            ErrorCode.INVALID_MESSAGE, "lock must be 1-256 characters of A-Z a-z 0-9 _ . @ = + : -"
        )
    return name


async def check_lock(locks: LockStore, name: str, token: int) -> bool:
    """Whether `token` is the current, unexpired fencing token of the lock `name`: a save
    guarded by the lock may proceed only then."""
    return await locks.check(validate_lock_name(name), token)


async def describe_lock(locks: LockStore, name: str) -> dict[str, Any] | None:
    """The lock's holder, owner, token and remaining seconds, None when it is free."""
    grant = await locks.holder(validate_lock_name(name))
    if grant is None:
        return None
    return {"holder": grant.holder, "owner": grant.owner, "token": grant.token, "ttl": grant.ttl}


class TabLocks:
    """The locks this node's tabs hold."""

    def __init__(self, node: Node, tabs: Tabs, rooms: Rooms, settings: CollabSettings) -> None:
        self._node = node
        self.store = node.engine.locks
        self.tabs = tabs
        self._rooms = rooms
        self.settings = settings

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
        await self._take(
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
        await self._take(
            session,
            f"node:{workflow_id}:{node_id}",
            workflow_id,
            {"nodeId": node_id},
            reply,
            request_id,
            force=force,
        )

    async def _take(
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
        node = self._node
        channel = f"workflow:{workflow_id}"
        await node.subscriptions.authorize(session, channel)
        if not await node.policy.can_write(session.identity, "workflow", workflow_id):
            raise ProtocolError(ErrorCode.FORBIDDEN, f"{channel!r} is read-only for this user")
        held = self.tabs.locks(session).get(name)
        label = f"the lock of node {what['nodeId']!r}" if what else "the write lock"
        if renew_only and held is None:
            raise ProtocolError(ErrorCode.LOCK_NOT_HELD, f"this tab does not hold {label}")
        granted, grant = await self.store.acquire(
            name, session.push_ref, session.user_id, self.settings.lock_ttl, takeover=force
        )
        if not granted:
            if held is not None:
                self.tabs.locks(session).pop(name, None)  # lost (expired and taken)
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
        tab = self.tabs.of(session)
        tab.locks[name] = grant.token
        tab.lock_seen[name] = time.monotonic()
        if grant.token != held:
            await node.announce(
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

    async def release(self, session: Session, name: str) -> bool:
        """Let go of a lock the session holds, and tell the workflow's watchers."""
        tab = self.tabs.get(session)
        if tab is None:
            return False
        token = tab.locks.pop(name, None)
        tab.lock_seen.pop(name, None)
        if token is None:
            return False
        released = await self.store.release(name, session.push_ref, token)
        # (claimed, so that no node announces its end again when it notices it)
        if released and await self._rooms.claim_lock_end(name, token):
            node = self._node
            if name.startswith("workflow:"):
                await node.announce(name, "writeAccessReleased", {"workflowId": name[9:]})
            elif name.startswith("node:"):
                _, workflow_id, node_id = name.split(":", 2)
                await node.announce(
                    f"workflow:{workflow_id}",
                    "nodeUnlocked",
                    {"workflowId": workflow_id, "nodeId": node_id},
                )
        return released

    async def release_workflow(self, session: Session, workflow_id: str) -> None:
        """Let go of the tab's locks of one workflow (its write lock and node locks)."""
        await self.release(session, f"workflow:{workflow_id}")
        prefix = f"node:{workflow_id}:"
        for name in [n for n in self.tabs.locks(session) if n.startswith(prefix)]:
            await self.release(session, name)

    async def renew(self, sessions: list[Session]) -> None:
        """Renew the locks of these tabs; release the ones their tab stopped confirming."""
        now = time.monotonic()
        for session, tab in list(self.tabs.among(sessions)):
            for name, token in list(tab.locks.items()):
                if now - tab.lock_seen.get(name, now) > self.settings.lock_idle_ttl:
                    await self.release(session, name)  # not confirmed for too long
                    continue
                granted, grant = await self.store.acquire(
                    name, session.push_ref, session.user_id, self.settings.lock_ttl
                )
                if not granted or grant.token != token:
                    tab.locks.pop(name, None)
