"""What a feature plugs into a node: the one interface between `core` and the packages that
add behaviour to it (`collab`, `execution`).

A feature is a `Feature` handed to `Node.add`. It declares, in one place, everything it takes
part in:

- `commands`: client command types it runs (`workflowOpened`, `executionSnapshot`...), each
  with its handler; `lossy_commands` are the ones exempt from the connection's message rate
  limit because their handler limits and drops them itself (cursor moves);
- `authorizers`: channel kinds whose subscriptions it authorizes (`execution:`);
- `publishers`: channel kinds whose publications take its own publishing path (execution
  events into `execution:<id>`);
- `channels`: channel prefixes it delivers itself instead of the hub's fan-out (`collab:`);
- `taps`: publication types it sees before they are fanned out (node lock announcements);
- `observers`: publication types it acts on when a session is handed one (an execution's
  stream notice, its end);
- lifecycle and session hooks: `start`, `close`, `session_replaced`, `session_closed`,
  `renew`.

Everything is optional; the node looks the declarations up once, in `Node.add`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from enum import Enum
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from livepush.protocol.envelope import Priority, Publication

if TYPE_CHECKING:
    from livepush.core.session import Session

#: Where a command's reply (or error) goes: the connection itself, or an SSE POST's response.
Reply = Callable[[bytes], None]

#: Runs one decoded command of a session; raises `ProtocolError` for an error reply.
CommandHandler = Callable[["Session", Any, Reply], Awaitable[None]]


class Access(Enum):
    """What an authorized subscription is."""

    #: A subscription of the client's own, with a presence entry.
    SUBSCRIBE = "subscribe"
    #: Allowed only as a follower (no presence entry; the server may end it, e.g. when the
    #: execution it follows finishes).
    FOLLOW = "follow"


#: Decides a subscription to a channel of the feature's kind (`ident` is the part after the
#: colon): returns its `Access`, or raises `ProtocolError` (`forbidden`).
ChannelAuthorizer = Callable[["Session", str], Awaitable[Access]]

#: A publication from the broker (any node's).
PublicationHandler = Callable[[Publication], None]

#: A session was handed a publication (live, or from history once its join completed).
DeliveryObserver = Callable[["Session", Publication], None]


class Prepared(Protocol):
    """A message checked and encoded by a feature's publishing path, not yet published."""

    @property
    def type(self) -> str:
        """The message type (for metrics)."""
        ...

    async def place(self) -> Publication:
        """Publish it; returns the publication placed in its stream."""
        ...


#: A feature's publishing path for a channel kind: `(channel, type, data, priority, key)` to
#: a `Prepared`, or None when the message takes the plain path. Raises `ProtocolError`.
Preparer = Callable[[str, str, "dict[str, Any] | bytes", Priority, "str | None"], "Prepared | None"]


class Feature:
    """Base of a feature that plugs into a node; override what the feature takes part in."""

    #: A short name for logs.
    name: ClassVar[str] = "feature"

    def __init__(self) -> None:
        self.commands: Mapping[str, CommandHandler] = {}
        self.lossy_commands: frozenset[str] = frozenset()
        self.authorizers: Mapping[str, ChannelAuthorizer] = {}
        self.publishers: Mapping[str, Preparer] = {}
        self.channels: Mapping[str, PublicationHandler] = {}
        self.taps: Mapping[str, PublicationHandler] = {}
        self.observers: Mapping[str, DeliveryObserver] = {}

    async def start(self) -> None:
        """The node started (its engine is up): start timers and stores."""

    async def close(self) -> None:
        """The node is closing (before its engine): stop timers and transfers."""

    def session_replaced(self, previous: Session, session: Session) -> None:
        """A reconnect under the same pushRef replaced `previous` with `session` (the same
        tab); `previous` is closed afterwards."""

    async def session_closed(self, session: Session) -> None:
        """A connection ended: let go of what it held (before its subscriptions are
        forgotten). Errors are logged by the node and do not stop the others."""

    async def renew(self, sessions: list[Session]) -> None:
        """Renew this node's shared state of these open sessions in the engine (called every
        third of the presence ttl, so that a dead node's state lapses by itself)."""
