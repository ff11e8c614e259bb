"""Reassembly of large node outputs sent in pieces (docs/protocol.md, "Large outputs").

A publication `executionOutput` whose `data.delivery` is `"chunks"` (the *marker*) is followed,
on the same connection, by `executionOutputChunk` control messages (no offset of their own)
naming the marker by `channel` and `offset`, with `outputId`, `index` (0, 1, ...), `final` and
`text`. The concatenated texts are the JSON of the node's `nodeExecuteAfterData` data, exactly
`data.bytes` long in UTF-8.

`OutputAssembler` collects the pieces and checks them (consecutive indexes, the announced
size, valid JSON, a size limit). While a channel has an output being assembled, whatever the
client would deliver after it on that channel waits behind it (`hold`), so the application
sees the channel in order; other channels are not held. It knows nothing of the client: items
held are opaque, and finished outputs come back as `Assembly` objects, in channel order.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Generic, TypeVar

import msgspec

from livepush.client.positions import Position

log = logging.getLogger(__name__)

#: Largest output (the marker's `bytes`) the client reassembles by default: 256 MiB.
DEFAULT_MAX_OUTPUT_BYTES: Final = 256 * 1024 * 1024
#: The `type` of the event the client emits when an output cannot be delivered.
OUTPUT_ERROR_TYPE: Final = "executionOutputError"
#: The `type` of a reassembled output (n8n's).
OUTPUT_DATA_TYPE: Final = "nodeExecuteAfterData"

#: Error codes of `executionOutputError` events.
OUTPUT_TOO_LARGE: Final = "output_too_large"
OUTPUT_INVALID_MARKER: Final = "output_invalid_marker"
OUTPUT_CHUNK_MISSING: Final = "output_chunk_missing"
OUTPUT_INVALID_CHUNK: Final = "output_invalid_chunk"
OUTPUT_SIZE_MISMATCH: Final = "output_size_mismatch"
OUTPUT_INVALID_JSON: Final = "output_invalid_json"
OUTPUT_ABANDONED: Final = "output_abandoned"

T = TypeVar("T")


@dataclass(eq=False, slots=True)
class Assembly:
    """One chunked output: its marker, the pieces so far, and (once `done`) either `data`
    (the decoded JSON) or `error` (`(code, message)`)."""

    channel: str
    offset: int
    epoch: str | None
    output_id: str
    size: int
    #: The marker publication, whole (`type`, `data`, `channel`, `offset`, `epoch`).
    marker: Mapping[str, Any]
    parts: list[str] = field(default_factory=list)
    received: int = 0
    next_index: int = 0
    done: bool = False
    data: Any = None
    error: tuple[str, str] | None = None

    @property
    def pin(self) -> Position | None:
        """Where the channel's resume position stays while this output is incomplete: just
        before the marker, so a reconnect gets the marker and its chunks again."""
        return Position(self.epoch, self.offset - 1) if self.epoch is not None else None

    def fail(self, code: str, message: str) -> None:
        self.done = True
        self.error = (code, message)
        self.parts = []


def is_chunked_marker(message: Mapping[str, Any]) -> bool:
    """Whether a publication announces an output sent in chunks."""
    data = message.get("data")
    return (
        message.get("type") == "executionOutput"
        and isinstance(data, Mapping)
        and data.get("delivery") == "chunks"
    )


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


class OutputAssembler(Generic[T]):
    """Outputs being reassembled, and what waits behind them, per channel.

    Invariant: a channel has a queue only while its first item is an unfinished `Assembly`;
    `feed` and `abandon` return the items that stop waiting, in order."""

    def __init__(self, max_bytes: int = DEFAULT_MAX_OUTPUT_BYTES) -> None:
        if max_bytes < 0:
            raise ValueError("max_bytes must be >= 0")
        self.max_bytes = max_bytes
        self._queues: dict[str, deque[T | Assembly]] = {}
        self._open: dict[tuple[str, int], Assembly] = {}

    def holding(self, channel: str) -> bool:
        """Whether the channel waits for an output: new items must be `hold`."""
        return channel in self._queues

    def is_open(self, channel: str, offset: int) -> bool:
        """Whether the output announced at this position is being assembled."""
        return (channel, offset) in self._open

    def pins(self) -> dict[str, Position]:
        """The position each waiting channel must not be resumed past."""
        pins: dict[str, Position] = {}
        for channel, queue in self._queues.items():
            head = queue[0]
            if isinstance(head, Assembly) and head.pin is not None:
                pins[channel] = head.pin
        return pins

    def begin(
        self, channel: str, offset: int, epoch: str | None, marker: Mapping[str, Any]
    ) -> tuple[str, str] | None:
        """Start assembling the output a marker announces (queued behind what the channel
        already waits for). Returns `(code, message)` instead when the output is refused:
        over `max_bytes`, or a marker without a usable `outputId` / `bytes`."""
        data = marker.get("data")
        data = data if isinstance(data, Mapping) else {}
        output_id = data.get("outputId")
        size = _int(data.get("bytes"))
        if not isinstance(output_id, str) or size is None or size < 0:
            return (
                OUTPUT_INVALID_MARKER,
                f"executionOutput at {channel}@{offset} has no usable outputId/bytes "
                f"(outputId={output_id!r}, bytes={data.get('bytes')!r})",
            )
        if size > self.max_bytes:
            return (
                OUTPUT_TOO_LARGE,
                f"output {output_id} at {channel}@{offset} is {size} bytes, over the client's "
                f"max_output_bytes ({self.max_bytes}); fetch it by its url instead",
            )
        assembly = Assembly(channel, offset, epoch, output_id, size, marker)
        self._open[(channel, offset)] = assembly
        self._queues.setdefault(channel, deque()).append(assembly)
        return None

    def hold(self, channel: str, item: T) -> None:
        """Queue an item behind the channel's outputs (only while `holding(channel)`)."""
        self._queues[channel].append(item)

    def feed(self, chunk: Mapping[str, Any]) -> list[T | Assembly]:
        """Take one chunk (the `data` of an `executionOutputChunk`). Chunks of no output
        being assembled (a refused or failed one, a duplicate marker's) are ignored."""
        channel = chunk.get("channel")
        offset = _int(chunk.get("offset"))
        if not isinstance(channel, str) or offset is None:
            log.warning("livepush: executionOutputChunk without channel/offset ignored")
            return []
        assembly = self._open.get((channel, offset))
        if assembly is None or assembly.output_id != chunk.get("outputId"):
            log.debug(
                "livepush: chunk of output %r at %s@%s not being assembled; ignored",
                chunk.get("outputId"),
                channel,
                offset,
            )
            return []
        self._take(assembly, chunk)
        if assembly.done:
            del self._open[(channel, offset)]
        return self._flush(channel)

    def _take(self, assembly: Assembly, chunk: Mapping[str, Any]) -> None:
        where = f"output {assembly.output_id} at {assembly.channel}@{assembly.offset}"
        error = chunk.get("error")
        if isinstance(error, Mapping):
            # the server could not send the rest (e.g. the output expired): its code
            code = error.get("code")
            assembly.fail(
                code if isinstance(code, str) and code else OUTPUT_INVALID_CHUNK,
                f"{where}: the server stopped sending it: {error.get('message', '')}",
            )
            return
        index = _int(chunk.get("index"))
        if index != assembly.next_index:
            assembly.fail(
                OUTPUT_CHUNK_MISSING,
                f"{where}: expected chunk {assembly.next_index}, got {chunk.get('index')!r}",
            )
            return
        text = chunk.get("text")
        if not isinstance(text, str):
            assembly.fail(OUTPUT_INVALID_CHUNK, f"{where}: chunk {index} has no text")
            return
        assembly.received += len(text.encode("utf-8", errors="surrogatepass"))
        if assembly.received > assembly.size:
            assembly.fail(
                OUTPUT_SIZE_MISMATCH,
                f"{where}: chunks 0..{index} already hold {assembly.received} bytes, "
                f"more than the announced {assembly.size}",
            )
            return
        assembly.parts.append(text)
        assembly.next_index += 1
        if chunk.get("final") is not True:
            return
        if assembly.received != assembly.size:
            assembly.fail(
                OUTPUT_SIZE_MISMATCH,
                f"{where}: {assembly.received} bytes in {index + 1} chunks, the marker "
                f"announced {assembly.size}",
            )
            return
        text = "".join(assembly.parts)
        assembly.parts = []
        try:
            assembly.data = msgspec.json.decode(text)
        except msgspec.DecodeError as exc:
            assembly.fail(OUTPUT_INVALID_JSON, f"{where}: the joined chunks are not JSON: {exc}")
            return
        assembly.done = True

    def abandon(self, channel: str, code: str, message: str) -> list[T | Assembly]:
        """Give up the channel's unfinished outputs (each fails with `code`) and release
        everything the channel held, in order."""
        queue = self._queues.pop(channel, None)
        if queue is None:
            return []
        for item in queue:
            if isinstance(item, Assembly) and not item.done:
                item.fail(code, message)
                self._open.pop((item.channel, item.offset), None)
        return list(queue)

    def discard(self) -> dict[str, Position]:
        """Drop every unfinished output and everything held (the connection is gone: the
        server sends them again after a resume from the returned pins)."""
        pins = self.pins()
        self._queues.clear()
        self._open.clear()
        return pins

    def _flush(self, channel: str) -> list[T | Assembly]:
        queue = self._queues.get(channel)
        released: list[T | Assembly] = []
        while queue:
            head = queue[0]
            if isinstance(head, Assembly) and not head.done:
                break
            released.append(queue.popleft())
        if not queue:
            self._queues.pop(channel, None)
        return released
