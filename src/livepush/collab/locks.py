"""Locks with fencing tokens, as the host application sees them.

The engine grants locks atomically (`engines/base.py`, `LockStore`); here are the rules for
lock names and the check a save endpoint makes:

    if not await check_lock(node, "workflow:42", token):
        raise Conflict("your write lock expired or was taken over; reload")

or over HTTP: `POST /api/v1/locks/check` with `{"lock": "workflow:42", "token": 17}`.
"""

from __future__ import annotations

import re
from typing import Any

from livepush.core.node import Node
from livepush.protocol.errors import ErrorCode, ProtocolError

_NAME = re.compile(r"[A-Za-z0-9_.@=+:\-]{1,256}")


def validate_lock_name(name: object) -> str:
    """A lock name: 1-256 of A-Z a-z 0-9 _ . @ = + : - (`workflow:42`, `node:42:Set`)."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ProtocolError(
            ErrorCode.INVALID_MESSAGE, "lock must be 1-256 characters of A-Z a-z 0-9 _ . @ = + : -"
        )
    return name


async def check_lock(node: Node, name: str, token: int) -> bool:
    """Whether `token` is the current, unexpired fencing token of the lock `name`: a save
    guarded by the lock may proceed only then."""
    return await node.locks.check(validate_lock_name(name), token)


async def describe_lock(node: Node, name: str) -> dict[str, Any] | None:
    """The lock's holder, owner, token and remaining seconds, None when it is free."""
    grant = await node.locks.holder(validate_lock_name(name))
    if grant is None:
        return None
    return {"holder": grant.holder, "owner": grant.owner, "token": grant.token, "ttl": grant.ttl}
