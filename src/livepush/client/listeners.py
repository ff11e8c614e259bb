"""The application's listeners, and the task that calls them.

Events (state changes, lost continuity, messages) are queued in the order they happened and
handed to the listeners by one dispatcher task, so a listener may itself await a command
without blocking the reading of its reply. When listeners fall behind by `EVENTS_HIGH` events,
the reader waits (`wait_for_room`) until they are down to `EVENTS_LOW`: the client never reads
faster than the application consumes.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
from collections.abc import Callable
from typing import Any, Final

from livepush.client.messages import (
    Message,
    MessageCallback,
    RecoveryCallback,
    StateCallback,
    StateChange,
    Unsubscribe,
)
from livepush.client.positions import Position
from livepush.protocol.envelope import CONTROL_TYPES

log = logging.getLogger(__name__)

#: Listener events waiting: the reader pauses at the high mark until the low one.
EVENTS_HIGH: Final = 10_000
EVENTS_LOW: Final = 1_000


class Listeners:
    """The registered listeners and the queue of events waiting for them (`run` calls them)."""

    def __init__(self) -> None:
        self._by_type: dict[str, list[MessageCallback]] = {}
        self._by_channel: dict[str, list[MessageCallback]] = {}
        self._state: list[StateCallback] = []
        self._recovery: list[RecoveryCallback] = []
        self._events: asyncio.Queue[tuple[str, tuple[Any, ...]] | None] = asyncio.Queue()
        self._room = asyncio.Event()
        self._room.set()

    # -- registration (`Client.on`, `on_channel`, `on_state`, `on_recovery_failed`) -------

    def on(self, message_type: str, callback: MessageCallback) -> Unsubscribe:
        """Listen to every message of a type (`"*"`: every type)."""
        return _add(self._by_type.setdefault(message_type, []), callback)

    def on_channel(self, channel: str, callback: MessageCallback) -> Unsubscribe:
        """Listen to every publication of a channel."""
        return _add(self._by_channel.setdefault(channel, []), callback)

    def on_state(self, callback: StateCallback) -> Unsubscribe:
        """Listen to state transitions."""
        return _add(self._state, callback)

    def on_recovery_failed(self, callback: RecoveryCallback) -> Unsubscribe:
        """Listen to losses of continuity."""
        return _add(self._recovery, callback)

    # -- events ----------------------------------------------------------------------------

    def state(self, change: StateChange) -> None:
        """Queue a state transition for the `on_state` listeners."""
        self._events.put_nowait(("state", (change,)))

    def recovery_failed(self, channel: str, position: Position) -> None:
        """Queue a loss of continuity for the `on_recovery_failed` listeners."""
        self._events.put_nowait(("recovery", (channel, position)))

    def message(self, message: Message) -> None:
        """Queue a message for the `on` listeners of its type (and of `"*"`) and, for a
        publication, the `on_channel` listeners of its channel."""
        self._events.put_nowait(("message", (message,)))

    def stop(self) -> None:
        """No more events: `run` returns once the listeners have had those queued."""
        self._events.put_nowait(None)

    async def wait_for_room(self) -> None:
        """Back-pressure: past `EVENTS_HIGH` events waiting, wait until the listeners are
        down to `EVENTS_LOW`."""
        if self._events.qsize() >= EVENTS_HIGH:
            self._room.clear()
            await self._room.wait()

    async def run(self) -> None:
        """Call the listeners of each event in turn, until `stop`. A listener that raises is
        logged and does not stop the others."""
        while True:
            event = await self._events.get()
            if self._events.qsize() <= EVENTS_LOW:
                self._room.set()
            if event is None:
                self._room.set()
                return
            kind, args = event
            for callback in self._callbacks(kind, args):
                try:
                    result = callback(*args)
                    if inspect.isawaitable(result):
                        await result
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("livepush: listener %r failed", callback)

    def _callbacks(self, kind: str, args: tuple[Any, ...]) -> list[Callable[..., Any]]:
        if kind == "state":
            return list(self._state)
        if kind == "recovery":
            return list(self._recovery)
        message: Message = args[0]
        callbacks: list[Callable[..., Any]] = [
            *self._by_type.get(message.type, ()),
            *self._by_type.get("*", ()),
        ]
        if message.channel is not None and message.type not in CONTROL_TYPES:
            callbacks.extend(self._by_channel.get(message.channel, ()))
        return callbacks


def _add(listeners: list[Any], callback: Any) -> Unsubscribe:
    listeners.append(callback)

    def remove() -> None:
        with contextlib.suppress(ValueError):
            listeners.remove(callback)

    return remove
