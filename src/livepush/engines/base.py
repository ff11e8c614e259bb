"""The engine contracts. `memory.py` implements them in-process; the Redis engine (`redis/`)
implements the same contracts for clusters, and one contract test suite (tests/engines) runs
against every engine. The document store's contract is `documents.py`.

Guarantees every broker gives:
- `publish` of a reliable publication assigns the channel's next offset, appends it to the
  channel's bounded history and hands it to every node subscribed to the channel, atomically
  per channel: every node sees a channel's publications in offset order, with no gaps the
  history does not also show.
- Each channel's stream has an epoch; it changes whenever the stream's continuity is lost
  (history storage lost or expired), so a position from an older epoch is never "recovered"
  into a silently incomplete history.
- `recover` returns exactly the publications after a position, in order, or says
  `recovered=False` when it cannot.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, NamedTuple

from livepush.engines.documents import DocumentStore
from livepush.protocol.envelope import Publication, StreamPosition
from livepush.protocol.errors import ErrorCode, ProtocolError

PublicationHandler = Callable[[Publication], None]
#: Told that a subscribed channel's stream lost continuity (its new position).
ResetHandler = Callable[[str, StreamPosition], None]
#: Runs client messages for a local connection: (pushRef, userId, messages) -> replies, None
#: when the connection is not on this node; raises `ProtocolError` to refuse.
CommandHandler = Callable[[str, str, list[bytes]], Awaitable[list[bytes] | None]]


class EngineUnavailable(ProtocolError):
    """The engine cannot serve the request right now (Redis unreachable); retry later."""

    def __init__(self, message: str) -> None:
        super().__init__(ErrorCode.ENGINE_UNAVAILABLE, message)


class Recovery(NamedTuple):
    """The answer to "what did I miss in this channel since this position?"."""

    position: StreamPosition
    publications: list[Publication]
    recovered: bool


class Broker(ABC):
    """Moves publications to every node that has subscribers, and keeps per-channel history."""

    #: Whether reads cost a round trip to another process (worth sharing between sessions
    #: that ask the same at once); an in-process broker answers without suspending.
    remote = False

    def __init__(self) -> None:
        self._handler: PublicationHandler = lambda publication: None
        self._reset: ResetHandler = lambda channel, position: None
        self._commands: CommandHandler | None = None

    def set_handler(self, handler: PublicationHandler) -> None:
        """Register the node callback that receives every publication of subscribed channels."""
        self._handler = handler

    def set_reset_handler(self, handler: ResetHandler) -> None:
        """Register the node callback told when a subscribed channel's stream lost continuity
        (publications this node can no longer deliver): its clients must resynchronise."""
        self._reset = handler

    def set_command_handler(self, handler: CommandHandler) -> None:
        """Register the node callback that runs commands forwarded by other nodes."""
        self._commands = handler

    async def forward_commands(
        self, push_ref: str, user_id: str, messages: list[bytes]
    ) -> list[bytes] | None:
        """Run client messages on the node that holds `push_ref`'s connection; None when no
        node does (a single-node engine has no other node)."""
        return None

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Connect and start background work."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Stop background work and disconnect."""

    @property
    def ready(self) -> bool:
        """Whether the broker can publish and deliver right now (for /readyz)."""
        return True

    @abstractmethod
    async def publish(self, publication: Publication) -> Publication:
        """Publish; reliable publications come back placed at their stream position."""

    @abstractmethod
    async def subscribe(self, channel: str) -> None:
        """This node wants the channel's publications. Called for every local subscriber (it
        is idempotent); returns once every publication after the channel's current position
        will reach the handler."""

    @abstractmethod
    async def unsubscribe(self, channel: str) -> None:
        """This node no longer has subscribers of the channel (called once, for the last)."""

    @abstractmethod
    async def position(self, channel: str) -> StreamPosition:
        """The channel's current stream position (offset 0 before its first publication)."""

    @abstractmethod
    async def recover(self, channel: str, since: StreamPosition, limit: int) -> Recovery:
        """Publications after `since`, at most `limit` of them, or `recovered=False`."""


class PresenceStore(ABC):
    """Short-lived shared state with expiry: who is connected where, and pushRef ownership."""

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Start background work."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Stop background work."""

    @abstractmethod
    async def claim(self, name: str, owner: str, ttl: float) -> bool:
        """Own `name` for `ttl` seconds unless another owner holds it; renewing is a claim."""

    @abstractmethod
    async def release(self, name: str, owner: str, ttl: float) -> None:
        """Let a claim lapse after `ttl` seconds (0: at once) if `owner` still holds it."""

    @abstractmethod
    async def join(self, channel: str, client_id: str, info: dict[str, Any], ttl: float) -> None:
        """Add or refresh a client in a channel's presence for `ttl` seconds."""

    @abstractmethod
    async def leave(self, channel: str, client_id: str) -> None:
        """Remove a client from a channel's presence."""

    @abstractmethod
    async def members(self, channel: str) -> dict[str, dict[str, Any]]:
        """The clients present in a channel (expired ones excluded)."""

    async def join_many(
        self, entries: Sequence[tuple[str, str, dict[str, Any]]], ttl: float
    ) -> None:
        """`join` for many (channel, client_id, info) at once (engines batch them)."""
        for channel, client_id, info in entries:
            await self.join(channel, client_id, info, ttl)

    async def leave_many(self, entries: Sequence[tuple[str, str]]) -> None:
        """`leave` for many (channel, client_id) at once."""
        for channel, client_id in entries:
            await self.leave(channel, client_id)

    async def claim_many(self, claims: Sequence[tuple[str, str]], ttl: float) -> None:
        """Renew many (name, owner) claims at once (a claim someone else took is left)."""
        for name, owner in claims:
            await self.claim(name, owner, ttl)


#: `data` of a publication whose `sequenceNumber` the store sets to its offset starts so.
SEQUENCE_SLOT = b'{"sequenceNumber":0'


def with_sequence(data: bytes, offset: int) -> bytes:
    """`data` (starting with `SEQUENCE_SLOT`) with its sequence number set to `offset`."""
    return b'{"sequenceNumber":%d' % offset + data[len(SEQUENCE_SLOT) :]


class ExecutionState(NamedTuple):
    """An execution's recorded state: its fields, as of `position` in `execution:<id>`."""

    fields: dict[str, bytes]
    position: StreamPosition


class ExecutionStore(ABC):
    """Execution state and large outputs (livepush/execution), kept with their stream: an
    execution's state is updated in the same atomic step as the publication to its channel,
    so a snapshot names exactly the stream position it describes."""

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Connect."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Disconnect."""

    @abstractmethod
    async def publish(
        self,
        publication: Publication,
        execution_id: str,
        fields: Sequence[tuple[str, bytes]],
        delete: Sequence[str] = (),
        *,
        sequence: bool = False,
        retention: float,
    ) -> Publication:
        """Publish a reliable publication (to `execution:<execution_id>`, or another
        channel with no fields) and, atomically with it, set and delete these state fields;
        the state then lives `retention` seconds after its last update. With `sequence`, the
        publication's data starts with `SEQUENCE_SLOT` and gets its offset as
        `sequenceNumber`."""

    @abstractmethod
    async def state(self, execution_id: str) -> ExecutionState | None:
        """The execution's state, or None when it is unknown or expired."""

    @abstractmethod
    async def fields(self, execution_id: str, names: Sequence[str]) -> dict[str, bytes]:
        """Some fields of the execution's state (the ones it has)."""

    @abstractmethod
    async def put_output(self, execution_id: str, name: str, data: bytes, ttl: float) -> None:
        """Store a node output for `ttl` seconds."""

    @abstractmethod
    async def output_size(self, execution_id: str, name: str) -> int | None:
        """A stored output's size in bytes, None when it is gone."""

    @abstractmethod
    async def read_output(self, execution_id: str, name: str, start: int, end: int) -> bytes:
        """Bytes `start` to `end` (exclusive) of a stored output (b"" when it is gone)."""


class LockGrant(NamedTuple):
    """A lock as it stands: who holds it, for which user, under which fencing token, and
    for how much longer (seconds)."""

    name: str
    holder: str
    owner: str
    token: int
    ttl: float


class LockStore(ABC):
    """Locks with fencing tokens (collaboration: n8n's workflow write lock, node locks).

    Atomic per lock in every engine: two nodes asking at the same instant grant it once.
    Every grant to a new holder carries the lock's next token (tokens of a lock only ever
    increase, across expiries), so the host application can refuse a save from a writer whose
    lock expired or was taken over (`check`)."""

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Connect."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Disconnect."""

    @abstractmethod
    async def acquire(
        self, name: str, holder: str, owner: str, ttl: float, *, takeover: bool = False
    ) -> tuple[bool, LockGrant]:
        """Take the lock for `ttl` seconds if it is free or expired; the holder that has it
        renews it (same token). With `takeover`, a lock held by another holder of the same
        owner (another tab of the same user) is taken from it. Returns (granted, the lock as
        it now stands)."""

    @abstractmethod
    async def release(self, name: str, holder: str, token: int) -> bool:
        """Let go of the lock if `holder` has it under `token`."""

    @abstractmethod
    async def check(self, name: str, token: int) -> bool:
        """Whether `token` is the lock's current token, on a lock that has not expired: what
        a save guarded by the lock must check."""

    @abstractmethod
    async def holder(self, name: str) -> LockGrant | None:
        """The lock's current grant, None when it is free."""


class Engine(NamedTuple):
    """A broker, a presence store, an execution store, a lock store and a document store that
    work together (`factory.build_engine` builds the configured one)."""

    broker: Broker
    presence: PresenceStore
    executions: ExecutionStore
    locks: LockStore
    documents: DocumentStore
