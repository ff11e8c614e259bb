"""The outgoing queue: commands and messages waiting for the connection, then for their reply.

Commands get request ids in the order they are made and are written in the order they were
queued. While disconnected at most `size` wait (`QueueFull` beyond: never silently dropped).
When a connection ends, the commands it carried without an answer yet go back to the front of
the queue if they are idempotent (re-sending one is harmless); the others fail with
`ConnectionLost`, since the server may or may not have run them.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Final

from livepush.client.errors import ClientError, CommandError, ConnectionLost, QueueFull
from livepush.client.transports import Connection, PostFailed, SseConnection
from livepush.protocol.errors import CloseCode

#: Commands that are safe to send twice: re-sent after a reconnect if their reply was lost.
DEFAULT_IDEMPOTENT: Final = frozenset(
    {
        "subscribe",
        "unsubscribe",
        "ping",
        "presence",
        "executionSnapshot",
        "workflowOpened",
        "workflowClosed",
        "presenceUpdate",
    }
)


@dataclass(eq=False, slots=True)
class Outgoing:
    """A message waiting to be sent or for its reply (`future` None: no reply expected)."""

    body: dict[str, Any]
    future: asyncio.Future[dict[str, Any]] | None
    idempotent: bool

    @property
    def id(self) -> int | None:
        value = self.body.get("id")
        return value if isinstance(value, int) else None

    @property
    def type(self) -> str:
        return str(self.body["type"])


class CommandQueue:
    """What waits to be written, and what was written and waits for its answer."""

    def __init__(self, size: int, idempotent: Iterable[str] = DEFAULT_IDEMPOTENT) -> None:
        self.size = size
        self.idempotent = frozenset(idempotent)
        #: Commands sent again after a reconnect since the client started.
        self.resent = 0
        self._ids = itertools.count(1)
        self._queue: deque[Outgoing] = deque()
        self._ready = asyncio.Event()
        self._inflight: dict[int, Outgoing] = {}

    def __len__(self) -> int:
        return len(self._queue)

    def command(
        self, command_type: str, fields: dict[str, Any], future: asyncio.Future[dict[str, Any]]
    ) -> Outgoing:
        """A command with the next request id, answered through `future`."""
        body = {"type": command_type, "id": next(self._ids), **fields}
        return Outgoing(body, future, command_type in self.idempotent)

    def put(self, item: Outgoing, *, bounded: bool) -> None:
        """Queue an item; `bounded` (while disconnected): `QueueFull` once `size` wait."""
        if bounded and len(self._queue) >= self.size:
            raise QueueFull(
                f"{len(self._queue)} commands already wait for the connection "
                f"(command_queue_size={self.size})"
            )
        self._queue.append(item)
        self._ready.set()

    def put_first(self, items: list[Outgoing]) -> None:
        """Queue items before everything waiting, in their order."""
        self._queue.extendleft(reversed(items))
        if self._queue:
            self._ready.set()

    def discard(self, item: Outgoing) -> None:
        """Forget a command that completed, timed out or was cancelled."""
        item_id = item.id
        if item_id is not None and self._inflight.get(item_id) is item:
            del self._inflight[item_id]
        with contextlib.suppress(ValueError):
            self._queue.remove(item)

    def answered(self, request_id: Any) -> Outgoing | None:
        """The command in flight that an answer with this id is for (no longer in flight)."""
        return self._inflight.pop(request_id, None) if isinstance(request_id, int) else None

    def requeue_inflight(self) -> None:
        """The connection is gone: idempotent commands in flight go back to the front of the
        queue (in their order); the others fail with `ConnectionLost`."""
        pending = list(self._inflight.values())
        self._inflight.clear()
        resend: list[Outgoing] = []
        for item in pending:
            if item.future is None or item.future.done():
                continue
            if item.idempotent:
                resend.append(item)
            else:
                item.future.set_exception(
                    ConnectionLost(
                        f"{item.type}: the connection dropped before its reply; not re-sent "
                        "(not idempotent)"
                    )
                )
        self.resent += len(resend)
        self.put_first(resend)

    def fail_all(self, error: ClientError) -> None:
        """Fail everything waiting or in flight (the client is closed)."""
        items = [*self._inflight.values(), *self._queue]
        self._inflight.clear()
        self._queue.clear()
        for item in items:
            if item.future is not None and not item.future.done():
                item.future.set_exception(error)

    async def send_loop(
        self,
        connection: Connection,
        post_timeout: float,
        handle: Callable[[dict[str, Any]], None],
    ) -> None:
        """Write queued messages in order while the connection lasts; over SSE, the POST's
        answers go to `handle`, as if they had come down the stream."""
        while True:
            await self._ready.wait()
            batch = self._take_batch(connection.max_batch)
            if not batch:
                continue
            for item in batch:
                if item.id is not None:
                    self._inflight[item.id] = item
            try:
                if isinstance(connection, SseConnection):
                    connection.post_timeout = post_timeout
                    replies = await connection.send([item.body for item in batch])
                    for reply in _match_replies(batch, replies or []):
                        handle(reply)
                else:
                    for index, item in enumerate(batch):
                        if item.future is not None and item.future.done():
                            continue  # timed out or cancelled meanwhile
                        try:
                            await connection.send([item.body])
                        except BaseException:
                            self._unsend(batch[index + 1 :])
                            raise
            except asyncio.CancelledError:
                raise
            except PostFailed as exc:
                if exc.status in (400, 413) and exc.code is not None:
                    # The whole request was refused (nothing ran): fail its commands.
                    for item in batch:
                        self._fail(item, CommandError(exc.code, exc.message, item.type))
                    continue
                connection.note_close(CloseCode.ABNORMAL_CLOSURE, f"command POST failed: {exc}")
                await connection.close()
                return
            except Exception as exc:
                connection.note_close(CloseCode.ABNORMAL_CLOSURE, f"send failed: {exc!r}")
                await connection.close()
                return

    def _take_batch(self, limit: int) -> list[Outgoing]:
        batch: list[Outgoing] = []
        while self._queue and len(batch) < limit:
            item = self._queue.popleft()
            if item.future is not None and item.future.done():
                continue
            batch.append(item)
        if not self._queue:
            self._ready.clear()
        return batch

    def _unsend(self, items: list[Outgoing]) -> None:
        """Items taken for sending but not written: back to the front of the queue."""
        for item in items:
            if item.id is not None:
                self._inflight.pop(item.id, None)
        self.put_first(items)

    def _fail(self, item: Outgoing, error: ClientError) -> None:
        if item.id is not None:
            self._inflight.pop(item.id, None)
        if item.future is not None and not item.future.done():
            item.future.set_exception(error)


def _match_replies(batch: list[Outgoing], replies: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Replies of an SSE POST, in order. The server answers an over-the-rate command with an
    `error` without id: when every command of the batch had an id and there are as many
    answers as commands, answers are matched by position."""
    by_position = len(replies) == len(batch) and all(item.id is not None for item in batch)
    matched: list[dict[str, Any]] = []
    for index, reply in enumerate(replies):
        if reply.get("id") is None and by_position and reply.get("type") == "error":
            reply = {**reply, "id": batch[index].id}
        matched.append(reply)
    return matched
