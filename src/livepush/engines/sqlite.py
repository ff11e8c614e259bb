"""CRDT documents in SQLite (the memory engine's documents, on disk): one file, stdlib
`sqlite3`.

Every statement runs on one thread of the store's own, fed by a queue, so the event loop never
waits on the disk. Appends that are waiting together are written in one transaction and one
commit (group commit): under load, one `fsync` serves many clients. The file is WAL with
`synchronous=FULL`: an append has reached the disk when it returns, so neither a killed
process nor a power cut loses it. The file is created when the first document is opened.

Tables: `crdt_documents` (doc, snapshot, bytes: snapshot and updates together, updates,
update_bytes) and `crdt_updates` (id, doc, data), the updates after the snapshot in id order.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import sqlite3
import threading
from collections.abc import Callable
from typing import Any

from livepush.engines.base import EngineUnavailable
from livepush.engines.documents import (
    DocumentStats,
    DocumentStore,
    DocumentTooLarge,
    StoredDocument,
    StoreSettings,
    squash,
)

log = logging.getLogger(__name__)

#: The file of the documents unless told otherwise (relative to the working directory).
DEFAULT_PATH = "livepush-crdt.sqlite3"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS crdt_documents (
    doc TEXT PRIMARY KEY,
    snapshot BLOB,
    bytes INTEGER NOT NULL DEFAULT 0,
    updates INTEGER NOT NULL DEFAULT 0,
    update_bytes INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS crdt_updates (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    doc TEXT NOT NULL,
    data BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS crdt_updates_by_doc ON crdt_updates (doc, id);
"""


class _Append:
    __slots__ = ("doc_id", "future", "update")

    def __init__(self, doc_id: str, update: bytes, future: asyncio.Future[Any]) -> None:
        self.doc_id = doc_id
        self.update = update
        self.future = future


class _Call:
    __slots__ = ("function", "future")

    def __init__(self, function: Callable[[sqlite3.Connection], Any], future: asyncio.Future[Any]):
        self.function = function
        self.future = future


_STOP = object()


class SqliteDocumentStore(DocumentStore):
    """Documents in one SQLite file (`:memory:` keeps them in this process only)."""

    def __init__(self, path: str, settings: StoreSettings | None = None) -> None:
        super().__init__(settings)
        self.path = path
        self._jobs: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        #: Group commits done and appends they held (tests, benchmarks).
        self.commits = 0
        self.appends = 0

    # -- the event loop's side ---------------------------------------------------------------

    def _ensure_thread(self) -> None:
        if self._thread is None:
            self._loop = asyncio.get_running_loop()
            self._thread = threading.Thread(
                target=self._run, name="livepush-crdt-sqlite", daemon=True
            )
            self._thread.start()

    async def _call(self, function: Callable[[sqlite3.Connection], Any]) -> Any:
        self._ensure_thread()
        future = asyncio.get_running_loop().create_future()
        self._jobs.put(_Call(function, future))
        return await future

    async def close(self) -> None:
        """Finish the queued work, then stop the thread and close the file."""
        thread, self._thread = self._thread, None
        if thread is None:
            return
        self._jobs.put(_STOP)
        await asyncio.to_thread(thread.join)

    async def load(self, doc_id: str) -> StoredDocument:
        """See `DocumentStore.load`."""
        result: StoredDocument = await self._call(lambda db: _load(db, doc_id))
        return result

    async def append(self, doc_id: str, update: bytes) -> int:
        """See `DocumentStore.append`; concurrent appends share one commit."""
        self._ensure_thread()
        future = asyncio.get_running_loop().create_future()
        self._jobs.put(_Append(doc_id, update, future))
        size: int = await future
        return size

    async def compact(self, doc_id: str) -> bool:
        """See `DocumentStore.compact`."""
        done: bool = await self._call(lambda db: self._compact(db, doc_id))
        if done:
            self.on_compacted(doc_id)
        return done

    async def stats(self, doc_id: str) -> DocumentStats:
        """See `DocumentStore.stats`."""
        result: DocumentStats = await self._call(lambda db: _stats(db, doc_id))
        return result

    def _resolve(
        self, future: asyncio.Future[Any], result: Any, error: BaseException | None
    ) -> None:
        loop = self._loop
        assert loop is not None
        loop.call_soon_threadsafe(_settle, future, result, error)

    # -- the store's thread ------------------------------------------------------------------

    def _run(self) -> None:
        try:
            db = self._open()
        except sqlite3.Error as exc:
            log.error("cannot open the CRDT store %s: %s", self.path, exc)
            self._fail_all(EngineUnavailable(f"CRDT store {self.path}: {exc}"))
            return
        try:
            while True:
                jobs = [self._jobs.get()]
                with contextlib.suppress(queue.Empty):
                    while len(jobs) < 1000:
                        jobs.append(self._jobs.get_nowait())
                if not self._run_batch(db, jobs):
                    return
        finally:
            db.close()

    def _open(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, isolation_level=None)
        if self.path != ":memory:":
            db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.executescript(_SCHEMA)
        return db

    def _run_batch(self, db: sqlite3.Connection, jobs: list[object]) -> bool:
        """Run jobs in order, each run of consecutive appends in one transaction. False once
        told to stop."""
        appends: list[_Append] = []
        for job in jobs:
            if isinstance(job, _Append):
                appends.append(job)
                continue
            if appends:
                self._commit(db, appends)
                appends = []
            if job is _STOP:
                self._fail_all(EngineUnavailable("the CRDT store is closed"))
                return False
            assert isinstance(job, _Call)
            try:
                self._resolve(job.future, job.function(db), None)
            except Exception as exc:
                if db.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        db.execute("ROLLBACK")
                self._resolve(job.future, None, _unavailable(exc))
        if appends:
            self._commit(db, appends)
        return True

    def _commit(self, db: sqlite3.Connection, appends: list[_Append]) -> None:
        outcomes: list[tuple[_Append, int | None, BaseException | None]] = []
        limit = self.settings.max_doc_bytes
        try:
            db.execute("BEGIN IMMEDIATE")
            for append in appends:
                row = db.execute(
                    "SELECT bytes FROM crdt_documents WHERE doc = ?",
                    (append.doc_id,),
                ).fetchone()
                size = row[0] if row else 0
                grown = size + len(append.update)
                if grown > limit:
                    outcomes.append((append, None, DocumentTooLarge(grown, limit)))
                    continue
                db.execute(
                    "INSERT INTO crdt_updates (doc, data) VALUES (?, ?)",
                    (append.doc_id, append.update),
                )
                db.execute(
                    "INSERT INTO crdt_documents (doc, bytes, updates, update_bytes) "
                    "VALUES (?, ?, 1, ?) ON CONFLICT (doc) DO UPDATE SET bytes = excluded.bytes, "
                    "updates = updates + 1, update_bytes = update_bytes + ?",
                    (append.doc_id, grown, len(append.update), len(append.update)),
                )
                outcomes.append((append, grown, None))
            db.execute("COMMIT")
        except Exception as exc:
            with contextlib.suppress(sqlite3.Error):
                db.execute("ROLLBACK")
            log.error("storing %d CRDT updates failed: %s", len(appends), exc)
            for append in appends:
                self._resolve(append.future, None, _unavailable(exc))
            return
        self.commits += 1
        self.appends += len(appends)
        to_compact: set[str] = set()
        for append, size, error in outcomes:
            self._resolve(append.future, size, error)
            to_compact.add(append.doc_id)
        for doc_id in to_compact:
            row = db.execute(
                "SELECT updates, update_bytes FROM crdt_documents WHERE doc = ?", (doc_id,)
            ).fetchone()
            if row and self.settings.wants_compaction(row[0], row[1]):
                try:
                    if self._compact(db, doc_id):
                        self._loop_call(self.on_compacted, doc_id)
                except Exception as exc:
                    log.error("compacting CRDT document %s failed: %s", doc_id, exc)

    def _loop_call(self, function: Callable[[str], None], argument: str) -> None:
        loop = self._loop
        assert loop is not None
        loop.call_soon_threadsafe(function, argument)

    def _compact(self, db: sqlite3.Connection, doc_id: str) -> bool:
        """Merge the snapshot and every update into a new snapshot, in one transaction."""
        db.execute("BEGIN IMMEDIATE")
        try:
            row = db.execute(
                "SELECT snapshot FROM crdt_documents WHERE doc = ?", (doc_id,)
            ).fetchone()
            rows = db.execute(
                "SELECT id, data FROM crdt_updates WHERE doc = ? ORDER BY id", (doc_id,)
            ).fetchall()
            if row is None or not rows:
                db.execute("ROLLBACK")
                return False
            parts = ([row[0]] if row[0] else []) + [data for _, data in rows]
            snapshot = squash(parts)
            db.execute(
                "UPDATE crdt_documents SET snapshot = ?, bytes = ?, updates = 0, "
                "update_bytes = 0 WHERE doc = ?",
                (snapshot, len(snapshot), doc_id),
            )
            db.execute("DELETE FROM crdt_updates WHERE doc = ? AND id <= ?", (doc_id, rows[-1][0]))
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        return True

    def _fail_all(self, error: BaseException) -> None:
        while True:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                return
            if isinstance(job, _Append | _Call):
                self._resolve(job.future, None, error)


def _load(db: sqlite3.Connection, doc_id: str) -> StoredDocument:
    db.execute("BEGIN")
    try:
        row = db.execute("SELECT snapshot FROM crdt_documents WHERE doc = ?", (doc_id,)).fetchone()
        rows = db.execute(
            "SELECT data FROM crdt_updates WHERE doc = ? ORDER BY id", (doc_id,)
        ).fetchall()
    finally:
        db.execute("COMMIT")
    return StoredDocument(row[0] if row else None, [data for (data,) in rows])


def _stats(db: sqlite3.Connection, doc_id: str) -> DocumentStats:
    row = db.execute(
        "SELECT bytes, updates, length(snapshot) FROM crdt_documents WHERE doc = ?", (doc_id,)
    ).fetchone()
    if row is None:
        return DocumentStats(0, 0, 0)
    return DocumentStats(row[0], row[1], row[2] or 0)


def _unavailable(exc: BaseException) -> BaseException:
    if isinstance(exc, DocumentTooLarge | EngineUnavailable):
        return exc
    return EngineUnavailable(f"CRDT store: {exc}")


def _settle(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)
