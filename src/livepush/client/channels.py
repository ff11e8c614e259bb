"""Which channels the connection is in, and what a reconnect resumes.

A connection is in its own channels (`push:<pushRef>`, `user:<id>`, `system`, learnt from
`connected`), the channels subscribed explicitly (by the handshake, `subscribe`,
`workflowOpened`, `executionSnapshot`), and those the server subscribed it to by itself
(`followed`: `execution:` channels announced by `executionStream`). The `tracker` holds where
each of them stands, and a reconnect asks for all of them again from there.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from livepush.client.positions import ChannelTracker, Position


class Channels:
    """The connection's channels: own, subscribed, followed, and their positions."""

    def __init__(self, channels: Iterable[str] = ()) -> None:
        self.tracker = ChannelTracker()
        #: Explicitly subscribed channels, in subscription order.
        self.subscribed: dict[str, None] = {}
        #: Channels the server subscribed the connection to (`executionStream`).
        self.followed: dict[str, None] = {}
        #: The connection's own channels, from the last `connected`.
        self.own: tuple[str, ...] = ()
        for channel in channels:
            self.subscribed[channel] = None
            self.tracker.track(channel)

    def kept(self, channel: str) -> bool:
        """Whether the connection is in the channel (own, subscribed or followed)."""
        return channel in self.subscribed or channel in self.followed or channel in self.own

    def untrack(self, channel: str) -> None:
        """Stop tracking a channel the connection did not end up in (a refused subscribe)."""
        if not self.kept(channel):
            self.tracker.forget(channel)

    @contextmanager
    def joining(self, channel: str) -> Iterator[None]:
        """Track a channel while the command that joins it runs: its publications may come
        before the reply. If the command fails, the channel is untracked again (unless the
        connection is in it anyway)."""
        self.tracker.track(channel)
        try:
            yield
        except BaseException:
            self.untrack(channel)
            raise

    def subscribe(self, channel: str) -> None:
        """The connection is in `channel` (a reply or `connected` says so)."""
        if channel not in self.own:
            self.subscribed[channel] = None
        self.tracker.track(channel)

    def set_own(self, push_ref: str | None, user_id: str | None) -> None:
        """The connection's own channels, as `connected` names them."""
        own = ["system"]
        if push_ref:
            own.insert(0, f"push:{push_ref}")
        if user_id:
            own.insert(1, f"user:{user_id}")
        self.own = tuple(own)
        for channel in self.own:
            self.tracker.track(channel)

    def follow(self, data: Any) -> None:
        """`executionStream`: the server subscribed this connection to the execution's
        channel, from its first event; track it and resume it like a subscription."""
        if not isinstance(data, dict):
            return
        channel, epoch = data.get("channel"), data.get("epoch")
        if not isinstance(channel, str) or channel in self.own:
            return
        if channel not in self.subscribed:
            self.followed[channel] = None
        self.tracker.track(channel)
        if isinstance(epoch, str):
            self.tracker.advance(channel, Position(epoch, 0))

    def leave(self, channel: str) -> bool:
        """The connection left the channel (unsubscribed, refused): forget it. Returns False
        for an own channel, which stays tracked."""
        self.subscribed.pop(channel, None)
        self.followed.pop(channel, None)
        if channel in self.own:
            return False
        self.tracker.forget(channel)
        return True

    def handshake(self) -> list[str]:
        """The channels a connection asks for: subscribed, then followed."""
        return [*self.subscribed, *(c for c in self.followed if c not in self.subscribed)]

    def resume_positions(self, pins: Mapping[str, Position]) -> dict[str, Position]:
        """Resume positions: the tracked ones, but never past a `pins` position (an output
        still being reassembled: a reconnect must get its marker and chunks again)."""
        explicit = [c for c in self.subscribed if c not in self.own]
        followed = [c for c in self.followed if c not in self.own and c not in self.subscribed]
        positions = self.tracker.known([*self.own, *explicit, *followed])
        for channel, pin in pins.items():
            if channel in positions:
                positions[channel] = pin
        return positions
