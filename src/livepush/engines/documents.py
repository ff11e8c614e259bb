"""Where CRDT documents live: the document store contract, an engine part like the others of
`base.py` (`sqlite.py` implements it for the memory engine, `redis/documents.py` for the Redis
engine), and the compaction both stores share.

A document is a snapshot (absent until the first compaction) and the updates stored after it,
in order. `append` stores an update durably before it returns; the room applies it and passes it
on only then, so an update any client has seen is never lost. When a document has more than
`compact_updates` updates (or its updates weigh more than a quarter of `max_doc_bytes`) the
store merges them into the snapshot and drops them, in one atomic step.

In a cluster the store also carries what other nodes need: the updates stored by any node
(`set_handlers(updates=...)`, without gaps), and awareness, which is never stored.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from pycrdt import Doc, get_update, merge_updates

from livepush.protocol.crdt import EMPTY_UPDATE

#: Updates stored by another node: (document id, updates in order). May repeat ones the room
#: already has (Yjs ignores those).
UpdatesHandler = Callable[[str, list[bytes]], None]
#: Awareness relayed from another node: (document id, payload of `Room.relay_awareness`).
AwarenessHandler = Callable[[str, bytes], None]
#: Another node opened the document and asks for the awareness states held here.
QueryHandler = Callable[[str], None]


class DocumentTooLarge(Exception):
    """Storing the update would take the document over `max_doc_bytes`."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"the document would grow to {size} bytes, over its limit of {limit}")
        self.size = size
        self.limit = limit


@dataclass(frozen=True, slots=True)
class StoreSettings:
    """Limits and compaction of stored documents."""

    max_doc_bytes: int = 16 * 1024 * 1024
    compact_updates: int = 500

    def wants_compaction(self, updates: int, update_bytes: int) -> bool:
        """Whether a document's stored updates should be merged into its snapshot."""
        if updates > self.compact_updates:
            return True
        return updates > 1 and update_bytes > self.max_doc_bytes // 4


@dataclass(frozen=True, slots=True)
class StoredDocument:
    """A document as stored: its snapshot and the updates after it, oldest first."""

    snapshot: bytes | None
    updates: list[bytes]

    def parts(self) -> list[bytes]:
        """Everything to apply, in order."""
        return ([self.snapshot] if self.snapshot else []) + self.updates


@dataclass(frozen=True, slots=True)
class DocumentStats:
    """How much of a document is stored."""

    bytes: int
    updates: int
    snapshot_bytes: int


class DocumentStore(ABC):
    """Durable documents (and, in a cluster, the feed of other nodes' changes)."""

    #: Other processes change the documents too: their updates come through the handlers.
    remote: ClassVar[bool] = False

    def __init__(self, settings: StoreSettings | None = None) -> None:
        self.settings = settings or StoreSettings()
        self.on_updates: UpdatesHandler = _ignore_updates
        self.on_awareness: AwarenessHandler = _ignore_awareness
        self.on_awareness_query: QueryHandler = _ignore_query
        #: Called with the document id after each compaction (metrics).
        self.on_compacted: Callable[[str], None] = _ignore_query

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Prepare (connections are opened when first needed)."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections and threads; nothing stored is lost."""

    @abstractmethod
    async def load(self, doc_id: str) -> StoredDocument:
        """Read a document (empty if unknown); in a cluster, follow its changes from here on
        (updates stored after this read come through `on_updates`)."""

    async def unload(self, doc_id: str) -> None:  # noqa: B027 - optional hook
        """Stop following a document."""

    @abstractmethod
    async def append(self, doc_id: str, update: bytes) -> int:
        """Store an update durably; returns the document's stored size. Raises
        `DocumentTooLarge` (nothing stored) or `EngineUnavailable`."""

    @abstractmethod
    async def compact(self, doc_id: str) -> bool:
        """Merge the stored updates into the snapshot now; False if there was nothing to do
        (or another node did it meanwhile)."""

    @abstractmethod
    async def stats(self, doc_id: str) -> DocumentStats:
        """Stored size, updates and snapshot size of a document."""

    async def publish_awareness(self, doc_id: str, payload: bytes) -> None:  # noqa: B027 - optional hook
        """Pass awareness to the other nodes that have the document open."""

    async def query_awareness(self, doc_id: str) -> None:  # noqa: B027 - optional hook
        """Ask the other nodes for the awareness states they hold."""


def squash(parts: list[bytes]) -> bytes:
    """One update equivalent to `parts` applied in order, with deleted content garbage
    collected. Structs a document cannot integrate yet (their dependencies are missing, which
    only happens after data loss) are kept, since `Doc.get_update` would drop them."""
    if not parts:
        return EMPTY_UPDATE
    merged = merge_updates(*parts)
    doc: Doc[Any] = Doc()
    doc.apply_update(merged)
    pending = get_update(merged, doc.get_state())
    return merge_updates(doc.get_update(), pending)


def _ignore_updates(doc_id: str, updates: list[bytes]) -> None:
    pass


def _ignore_awareness(doc_id: str, payload: bytes) -> None:
    pass


def _ignore_query(doc_id: str) -> None:
    pass
