"""Chunked delivery of large node outputs, pulled per connection under a byte budget.

A connection that receives an `executionOutput` marker with `delivery: "chunks"` gets the
output's JSON text in `executionOutputChunk` messages, one at a time: the next chunk is read
from the engine's store only when everything sent to the connection before has reached its
socket (its queue is empty and the transport below its high-water mark). So a 50 MB output
costs each receiving connection at most one chunk of server memory, and the connection's
other messages (other executions, replies) are never behind more than one chunk.

Connections reading the same output at a similar pace share the encoded chunk frames through a
small cache, so 100 watchers of one output do not mean 100 reads and encodings of each chunk.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict, deque
from typing import NamedTuple

import msgspec
from prometheus_client import CollectorRegistry

from livepush.core.session import Session
from livepush.engines.base import ExecutionStore
from livepush.execution.metrics import ExecutionMetrics
from livepush.protocol.envelope import Publication

log = logging.getLogger(__name__)


class _Marker(msgspec.Struct):
    executionId: str
    executionIndex: int
    outputId: str
    bytes: int
    delivery: str


_decode_marker = msgspec.json.Decoder(_Marker)


class _Chunk(NamedTuple):
    frame: bytes
    end: int


class _Job(NamedTuple):
    marker: _Marker
    channel: str
    offset: int


def _utf8_cut(data: bytes, limit: int) -> int:
    """The largest cut <= limit that does not split a UTF-8 character."""
    if limit >= len(data):
        return len(data)
    cut = limit
    while cut > 0 and (data[cut] & 0xC0) == 0x80:
        cut -= 1
    return cut


class OutputTransfers:
    """Every chunked transfer of one node: a queue of outputs and one task per connection
    that has any."""

    def __init__(
        self,
        store: ExecutionStore,
        *,
        chunk_bytes: int,
        metrics: ExecutionMetrics | None = None,
        cache_bytes: int = 32 * 1024 * 1024,
    ) -> None:
        self.store = store
        self.metrics = metrics or ExecutionMetrics(CollectorRegistry())
        self.chunk_bytes = chunk_bytes
        self._cache: OrderedDict[tuple[str, int], _Chunk] = OrderedDict()
        self._cache_bytes = 0
        self._cache_limit = cache_bytes
        self._jobs: dict[Session, deque[_Job]] = {}
        self._tasks: dict[Session, asyncio.Task[None]] = {}
        #: Chunks sent, for metrics and tests.
        self.chunks_sent = 0

    def start(self, session: Session, publication: Publication) -> None:
        """Queue the output a marker announces for delivery to `session`."""
        try:
            marker = _decode_marker.decode(publication.data)
        except msgspec.ValidationError:
            log.warning("malformed %r; not transferred", publication)
            return
        if marker.delivery != "chunks":
            return
        job = _Job(marker, publication.channel, int(publication.offset or 0))
        self._jobs.setdefault(session, deque()).append(job)
        if session not in self._tasks:
            self._tasks[session] = asyncio.get_running_loop().create_task(self._run(session))
            self.metrics.output_transfers.inc()

    @property
    def active(self) -> int:
        """Connections with a transfer in progress."""
        return len(self._tasks)

    async def close(self) -> None:
        """Stop every transfer."""
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self, session: Session) -> None:
        jobs = self._jobs[session]
        try:
            while jobs and not session.closed:
                await self._transfer(session, jobs[0])
                jobs.popleft()
        except (ConnectionError, RuntimeError):
            pass  # the connection went away
        except Exception:
            log.exception("output transfer to %r failed", session)
        finally:
            del self._jobs[session]
            del self._tasks[session]
            self.metrics.output_transfers.dec()

    async def _transfer(self, session: Session, job: _Job) -> None:
        start = index = 0
        total = job.marker.bytes
        while not session.closed:
            await session.writable()
            if session.closed:
                return
            chunk = await self._chunk(job, index, start)
            session.send_control(chunk.frame)
            self.chunks_sent += 1
            self.metrics.output_chunks.labels("chunks").inc()
            self.metrics.output_chunks.labels("bytes").inc(len(chunk.frame))
            if chunk.end >= total or chunk.end <= start:
                return
            start, index = chunk.end, index + 1

    async def _chunk(self, job: _Job, index: int, start: int) -> _Chunk:
        marker = job.marker
        key = (marker.outputId + "@" + job.channel, start)
        cached = self._cache.get(key)
        if cached is not None:
            self._cache.move_to_end(key)
            return cached
        data = await self.store.read_output(
            marker.executionId, str(marker.executionIndex), start, start + self.chunk_bytes + 4
        )
        head = (
            b'{"type":"executionOutputChunk","data":{"outputId":'
            + msgspec.json.encode(marker.outputId)
            + b',"channel":"'
            + job.channel.encode()
            + b'","offset":%d,"index":%d' % (job.offset, index)
        )
        if not data:
            # expired or evicted since the marker was published: say so, never stall
            frame = head + (
                b',"final":true,"text":"","error":{"code":"output_not_found",'
                b'"message":"the output is no longer stored"}}}'
            )
            return _Chunk(frame, start)
        cut = _utf8_cut(data, self.chunk_bytes)
        end = start + cut
        final = end >= marker.bytes
        text = data[:cut].decode("utf-8", errors="replace")
        frame = (
            head
            + (b',"final":true' if final else b',"final":false')
            + b',"text":'
            + msgspec.json.encode(text)
            + b"}}"
        )
        chunk = _Chunk(frame, end)
        self._cache[key] = chunk
        self._cache_bytes += len(frame)
        while self._cache_bytes > self._cache_limit and self._cache:
            _, old = self._cache.popitem(last=False)
            self._cache_bytes -= len(old.frame)
        return chunk
