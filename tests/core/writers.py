"""A recording implementation of the session's transport port, shared by the core tests."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping

from livepush.core.session import GONE, PAUSED, SENT
from livepush.protocol.envelope import Publication, StreamPosition
from livepush.protocol.errors import CloseCode


class RecordingWriter:
    """The session's transport port: records frames; the test controls back-pressure.

    `tagged` prefixes frames with their kind (P publication, C control, M mark); `on_write`
    lets a test react to a write (raise, close...)."""

    transport = "test"

    def __init__(
        self,
        *,
        tracks_positions: bool = False,
        tagged: bool = True,
        on_write: Callable[[], object] | None = None,
    ) -> None:
        self.tracks_positions = tracks_positions
        self.tagged = tagged
        self.on_write = on_write
        self.paused = False
        self.writes: list[bytes] = []
        self.closed_with: list[tuple[CloseCode, str]] = []
        self.gone = False
        self.drain_calls = 0
        self._drained = asyncio.Event()

    def encode(self, publication: Publication) -> bytes:
        return b"P " + publication.payload if self.tagged else publication.payload

    def encode_control(self, payload: bytes) -> bytes:
        return b"C " + payload if self.tagged else payload

    def encode_mark(self, positions: Mapping[str, StreamPosition | None]) -> bytes:
        marks = [
            f"{channel} {'-' if position is None else f'{position.epoch}/{position.offset}'}"
            for channel, position in positions.items()
        ]
        return ("M " + ", ".join(marks)).encode()

    def send(self, publications: Publication | list[Publication]) -> int:
        # The session's hot path, built from the same parts a transport uses.
        if self.paused:
            return PAUSED
        if not isinstance(publications, list):
            publications = [publications]
        data = b"".join(self.encode(publication) for publication in publications)
        return SENT if self.write(data) else GONE

    def ping(self) -> bool:
        return True

    def write(self, data: bytes) -> bool:
        if self.gone:
            return False
        self.writes.append(data)
        if self.on_write is not None:
            self.on_write()
        return True

    async def drain(self) -> None:
        self.drain_calls += 1
        await self._drained.wait()
        if self.gone:
            raise ConnectionResetError("connection lost")

    def close(self, code: CloseCode, reason: str) -> None:
        self.closed_with.append((code, reason))

    # -- test controls -------------------------------------------------------------------------

    def pause(self) -> None:
        self.paused = True
        self._drained.clear()

    def resume(self) -> None:
        self.paused = False
        self._drained.set()

    def lose_connection(self) -> None:
        self.gone = True
        self._drained.set()
