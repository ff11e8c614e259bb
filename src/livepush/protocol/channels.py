"""Channel names: `workflow:<id>`, `execution:<id>`, `project:<id>`, `user:<id>`,
`push:<pushRef>` and `system`.

A channel name is validated once, where it enters the server; everything past that point can
trust it. The id alphabet excludes `|`, `,`, spaces and newlines, so names can be embedded
verbatim in SSE event ids and Redis keys.
"""

from __future__ import annotations

import re
import sys
from typing import Final

from livepush.protocol.errors import ErrorCode, ProtocolError

SYSTEM: Final = "system"
KINDS: Final = frozenset({"workflow", "execution", "project", "user", "push"})
MAX_CHANNEL_LENGTH: Final = 160

_ID = re.compile(r"[A-Za-z0-9_.@=+\-]{1,128}")
_PUSH_REF = re.compile(r"[A-Za-z0-9_\-]{1,64}")


def parse_channel(name: object) -> tuple[str, str]:
    """Split a channel name into (kind, id), raising `ProtocolError(invalid_channel)`."""
    if not isinstance(name, str) or not name or len(name) > MAX_CHANNEL_LENGTH:
        raise ProtocolError(ErrorCode.INVALID_CHANNEL, f"invalid channel name {name!r}")
    if name == SYSTEM:
        return SYSTEM, ""
    kind, sep, ident = name.partition(":")
    if not sep or kind not in KINDS:
        raise ProtocolError(
            ErrorCode.INVALID_CHANNEL,
            f"unknown channel {name!r}: expected one of "
            "workflow:<id>, execution:<id>, project:<id>, user:<id>, push:<pushRef>, system",
        )
    if not _ID.fullmatch(ident):
        raise ProtocolError(
            ErrorCode.INVALID_CHANNEL,
            f"invalid channel id in {name!r}: 1-128 characters of A-Z a-z 0-9 _ . @ = + -",
        )
    return kind, ident


def validate_push_ref(push_ref: object) -> str:
    """Return the pushRef if it is well formed, else raise `ProtocolError(push_ref_invalid)`."""
    if not isinstance(push_ref, str) or not _PUSH_REF.fullmatch(push_ref):
        raise ProtocolError(
            ErrorCode.PUSH_REF_INVALID, "pushRef must be 1-64 characters of A-Z a-z 0-9 _ -"
        )
    return push_ref


def push_channel(push_ref: str) -> str:
    """The channel every connection with this pushRef is subscribed to."""
    return f"push:{push_ref}"


def user_channel(user_id: str) -> str:
    """The channel that reaches every tab of one user (one shared string per user)."""
    return sys.intern(f"user:{user_id}")


def is_valid_user_id(user_id: object) -> bool:
    """User ids become channel ids, so they share the channel id alphabet."""
    return isinstance(user_id, str) and _ID.fullmatch(user_id) is not None
