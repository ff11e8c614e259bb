"""An incremental `text/event-stream` parser (the WHATWG "event stream interpretation").

Bytes go in as they arrive, in chunks of any size; complete events come out. Lines end with
CRLF, LF or CR (a CR at the end of one chunk followed by an LF at the start of the next is one
line end). Comments (`:ping`) are counted so the caller can tell a live but quiet stream from a
dead one.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class SseEvent:
    """One dispatched event.

    `data` is None for an event block without `data:` lines (an id-only event: livepush sends
    one after a subscribe or unsubscribe to move `Last-Event-ID`). `id` is the last event id
    buffer after this block (ids persist across events, as in `EventSource`), `has_id` whether
    this block set it."""

    data: str | None
    event: str
    id: str
    has_id: bool


class SseParser:
    """Feed it bytes with `feed()`; it returns the events completed by those bytes."""

    def __init__(self) -> None:
        self._buffer = b""
        self._skip_lf = False
        self._first = True
        self._data: list[str] = []
        self._event = ""
        self._has_id = False
        self._block_has_field = False
        #: The last event id buffer (what `EventSource` would send as `Last-Event-ID`).
        self.last_id = ""
        #: The last valid `retry:` value in milliseconds, or None.
        self.retry_ms: int | None = None
        #: Comment lines seen so far (the server's `:ping` keep-alives among them).
        self.comments = 0

    def feed(self, chunk: bytes) -> list[SseEvent]:
        """Parse a chunk; returns the events it completed, in order."""
        events: list[SseEvent] = []
        data = self._buffer + chunk
        start = 0
        length = len(data)
        if self._skip_lf and length and data[0:1] == b"\n":
            start = 1
        self._skip_lf = False
        while start < length:
            cr = data.find(b"\r", start)
            lf = data.find(b"\n", start)
            if cr == -1 and lf == -1:
                break
            if cr == -1 or (lf != -1 and lf < cr):
                end, next_start = lf, lf + 1
            else:
                end = cr
                if cr + 1 < length:
                    next_start = cr + 2 if data[cr + 1 : cr + 2] == b"\n" else cr + 1
                else:
                    next_start = cr + 1
                    self._skip_lf = True  # a LF may follow in the next chunk
            event = self._line(data[start:end])
            if event is not None:
                events.append(event)
            start = next_start
        self._buffer = data[start:]
        return events

    def _line(self, raw: bytes) -> SseEvent | None:
        line = raw.decode("utf-8", errors="replace")
        if self._first:
            self._first = False
            if line.startswith("\ufeff"):
                line = line[1:]
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            self.comments += 1
            return None
        name, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if name == "data":
            self._data.append(value)
            self._block_has_field = True
        elif name == "event":
            self._event = value
            self._block_has_field = True
        elif name == "id":
            if "\x00" not in value:
                self.last_id = value
                self._has_id = True
                self._block_has_field = True
        elif name == "retry" and value.isascii() and value.isdigit():
            self.retry_ms = int(value)
        # other field names are ignored, as the specification says
        return None

    def _dispatch(self) -> SseEvent | None:
        if not self._block_has_field:
            self._event = ""
            return None
        event = SseEvent(
            data="\n".join(self._data) if self._data else None,
            event=self._event or "message",
            id=self.last_id,
            has_id=self._has_id,
        )
        self._data = []
        self._event = ""
        self._has_id = False
        self._block_has_field = False
        return event
