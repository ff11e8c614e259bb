"""Per-channel stream positions: what the client has delivered, and what to resume from.

Every reliable publication carries `channel`, `epoch` and `offset` (docs/protocol.md); within
an epoch offsets are consecutive. The tracker decides, for each publication, whether it is new
(deliver it), a duplicate (drop it), or proof that continuity was lost (a new epoch, or a gap):
then the channel continues from the new position and the listeners are told to resynchronise.

The wire format of positions (`channel|epoch|offset`, the SSE id and `lastEventId`) is the
protocol's: `livepush.protocol.resume`.
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import Enum

from livepush.protocol.envelope import StreamPosition

#: A place in a channel's stream: its epoch and the offset of the last publication seen (0
#: before the first). The protocol's `StreamPosition`, under the name the client has always
#: given it.
Position = StreamPosition


class Verdict(Enum):
    """What to do with a publication."""

    #: The next one in order: deliver it.
    DELIVER = "deliver"
    #: Already delivered (offset <= the tracked one in the same epoch): drop it.
    DUPLICATE = "duplicate"
    #: Continuity was lost (another epoch, or offsets skipped): report, then deliver it.
    DISCONTINUITY = "discontinuity"


class ChannelTracker:
    """The last delivered position of every tracked channel.

    Only tracked channels are de-duplicated and resumed: the connection's own channels, the
    subscribed ones, and those with a subscribe in flight (`track`). A publication of an
    untracked channel is delivered as it is."""

    def __init__(self) -> None:
        self._positions: dict[str, Position | None] = {}
        #: Publications dropped as duplicates since the client started.
        self.duplicates = 0
        #: Discontinuities seen (new epoch or gap) since the client started.
        self.discontinuities = 0

    def __contains__(self, channel: object) -> bool:
        return channel in self._positions

    def track(self, channel: str) -> None:
        """Start tracking a channel (its position is learnt from the first reply or
        publication)."""
        self._positions.setdefault(channel, None)

    def forget(self, channel: str) -> None:
        """Stop tracking a channel (unsubscribed)."""
        self._positions.pop(channel, None)

    def get(self, channel: str) -> Position | None:
        """The channel's last delivered position, if known."""
        return self._positions.get(channel)

    def set(self, channel: str, position: Position) -> None:
        """Continue the channel from `position` (a reset, `recovered: false`, a fresh join)."""
        self._positions[channel] = position

    def advance(self, channel: str, position: Position) -> None:
        """Learn a position from a reply that may trail what was already delivered (an SSE
        subscribe reply arrives by POST, after live publications may have come down the
        stream): set it unless the channel is already further in the same epoch."""
        current = self._positions.get(channel)
        if current is None or current.epoch != position.epoch or position.offset > current.offset:
            self._positions[channel] = position

    def known(self, channels: Iterable[str] | None = None) -> dict[str, Position]:
        """Known positions of the given channels (default: all tracked), for resuming."""
        names = self._positions.keys() if channels is None else channels
        result: dict[str, Position] = {}
        for name in names:
            position = self._positions.get(name)
            if position is not None:
                result[name] = position
        return result

    def check(self, channel: str, epoch: str, offset: int) -> Verdict:
        """Judge one reliable publication of a tracked channel, and record it unless it is a
        duplicate."""
        current = self._positions.get(channel)
        if current is None:
            self._positions[channel] = Position(epoch, offset)
            return Verdict.DELIVER
        if current.epoch == epoch:
            if offset <= current.offset:
                self.duplicates += 1
                return Verdict.DUPLICATE
            self._positions[channel] = Position(epoch, offset)
            if offset == current.offset + 1:
                return Verdict.DELIVER
        else:
            self._positions[channel] = Position(epoch, offset)
        self.discontinuities += 1
        return Verdict.DISCONTINUITY
