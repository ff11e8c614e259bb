"""What the server sends, routed: answers to the commands waiting for them, publications
de-duplicated and delivered in each channel's order (outputs sent in chunks reassembled first),
control messages applied to the client's channels.

Nothing here talks to the network or calls a listener: messages come in through `connected`,
`handle` and `handle_message`; what the application must see is queued on `Listeners`.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from livepush.client.channels import Channels
from livepush.client.errors import CommandError
from livepush.client.listeners import Listeners
from livepush.client.messages import Message, position_of, to_message
from livepush.client.outputs import (
    OUTPUT_ABANDONED,
    OUTPUT_DATA_TYPE,
    OUTPUT_ERROR_TYPE,
    Assembly,
    OutputAssembler,
    is_chunked_marker,
)
from livepush.client.positions import Position, Verdict
from livepush.client.queue import CommandQueue, Outgoing
from livepush.client.transports import Frame
from livepush.protocol.envelope import CONTROL_TYPES
from livepush.protocol.errors import ErrorCode, ProtocolError
from livepush.protocol.resume import parse_positions

log = logging.getLogger(__name__)


class Inbound:
    """Routes the server's messages; counts what it delivered."""

    def __init__(
        self,
        channels: Channels,
        queue: CommandQueue,
        listeners: Listeners,
        *,
        max_output_bytes: int,
        on_token: Callable[[str], None],
        on_token_expiring: Callable[[], None],
    ) -> None:
        """`on_token` is called with the new token when a `refresh` is answered,
        `on_token_expiring` on `tokenExpiring`."""
        self._channels = channels
        self._tracker = channels.tracker
        self._queue = queue
        self._listeners = listeners
        self._on_token = on_token
        self._on_token_expiring = on_token_expiring
        self.outputs: OutputAssembler[Callable[[], None]] = OutputAssembler(max_output_bytes)
        self._released: deque[Callable[[], None] | Assembly] = deque()
        self._releasing = False
        #: Counters for `ClientStats`.
        self.delivered = 0
        self.recovered = 0
        self.recovery_failures = 0
        self.outputs_reassembled = 0
        self.output_errors = 0

    # -- a connection's first message ------------------------------------------------------

    def connected(self, data: Mapping[str, Any]) -> list[tuple[str, Position]]:
        """Apply `connected`'s channels (resumed, refused) to the client's; returns the
        channels whose continuity was lost (`recovered: false`), to report once the client
        is connected."""
        channels = self._channels
        failed: list[tuple[str, Position]] = []
        entries = data.get("channels")
        for entry in entries if isinstance(entries, list) else []:
            if not isinstance(entry, dict) or not isinstance(entry.get("channel"), str):
                continue
            channel = entry["channel"]
            if channel not in channels.own and channel not in channels.followed:
                channels.subscribed[channel] = None
            self._tracker.track(channel)
            position = position_of(entry)
            if position is None:
                continue
            recovered = entry.get("recovered")
            if recovered is True and self._tracker.get(channel) is not None:
                missed = entry.get("missed")
                self.recovered += missed if isinstance(missed, int) else 0
                continue  # the missed publications follow, after our position
            self._tracker.set(channel, position)
            if recovered is False:
                failed.append((channel, position))
        refused = data.get("refused")
        for entry in refused if isinstance(refused, list) else []:
            if isinstance(entry, dict) and isinstance(entry.get("channel"), str):
                channel = entry["channel"]
                log.warning(
                    "livepush: subscription to %s refused at connect: %s %s",
                    channel,
                    entry.get("code"),
                    entry.get("message"),
                )
                channels.subscribed.pop(channel, None)
                channels.followed.pop(channel, None)
                self._tracker.forget(channel)
        return failed

    def connection_ended(self) -> None:
        """The connection ended: half-assembled outputs and what waited behind them are
        dropped, and their channels resume just before the marker (the server sends the
        marker, its chunks and the rest again)."""
        for channel, pin in self.outputs.discard().items():
            if channel in self._tracker:
                self._tracker.set(channel, pin)

    # -- what follows ----------------------------------------------------------------------

    async def handle(self, frame: Frame) -> None:
        """One frame read from the connection; waits while the listeners are too far
        behind."""
        if frame.mark is not None:
            try:
                marked = parse_positions(frame.mark)
            except ProtocolError as exc:
                log.debug("livepush: ignoring the malformed SSE id %r: %s", frame.mark, exc)
                return
            for channel, position in marked.items():
                if channel in self._tracker and self._tracker.get(channel) is None:
                    self._tracker.set(channel, position)
            return
        if frame.message is not None:
            self.handle_message(frame.message)
            await self._listeners.wait_for_room()

    def handle_message(self, message: dict[str, Any]) -> None:
        """One decoded server message (from the stream, or the answers of an SSE POST)."""
        message_type = message.get("type")
        if not isinstance(message_type, str):
            return
        request_id = message.get("id")
        if message_type in ("reply", "error") and request_id is not None:
            self._on_answer(message_type, request_id, message.get("data"))
            return
        if message_type not in CONTROL_TYPES and isinstance(message.get("channel"), str):
            self._on_publication(message)
            return
        data = message.get("data")
        if message_type == "executionOutputChunk":
            chunk = data if isinstance(data, dict) else message
            self._release(self.outputs.feed(chunk))
            return  # pieces are not messages: the reassembled output is
        if message_type == "channelReset" and isinstance(data, dict):
            channel = data.get("channel")
            position = position_of(data)
            if isinstance(channel, str) and position is not None:
                self._abandon_outputs(channel, "the server reset the channel (channelReset)")
                if channel in self._tracker:
                    self._tracker.set(channel, position)
                self.recovery_failed(channel, position)
        elif message_type == "unsubscribed" and isinstance(data, dict):
            channel = data.get("channel")
            if isinstance(channel, str):
                event = to_message(message)

                def end(channel: str = channel) -> None:
                    self._leave(channel)
                    self._listeners.message(event)

                # after what the channel still holds (an output being reassembled)
                self._in_channel(channel, end)
                return
        elif message_type == "tokenExpiring":
            self._on_token_expiring()
        elif message_type == "connected":
            log.warning("livepush: unexpected second connected message")
        self._listeners.message(to_message(message))

    def recovery_failed(self, channel: str, position: Position) -> None:
        """Report a loss of continuity: the channel continues after `position`."""
        self.recovery_failures += 1
        log.info("livepush: %s lost continuity; continuing after %s", channel, position)
        self._listeners.recovery_failed(channel, position)

    # -- publications ----------------------------------------------------------------------

    def _on_publication(self, message: dict[str, Any]) -> None:
        channel: str = message["channel"]
        offset = message.get("offset")
        epoch = message.get("epoch")
        if isinstance(offset, int) and isinstance(epoch, str):
            if channel in self._tracker:
                verdict = self._tracker.check(channel, epoch, offset)
                if verdict is Verdict.DUPLICATE:
                    return
                if verdict is Verdict.DISCONTINUITY:
                    lost = Position(epoch, offset - 1)
                    self._in_channel(channel, lambda: self.recovery_failed(channel, lost))
            elif self.outputs.is_open(channel, offset):
                return  # an untracked channel's marker again: already being assembled
        if message.get("type") == "executionStream":
            self._channels.follow(message.get("data"))
        if isinstance(offset, int) and is_chunked_marker(message):
            refused = self.outputs.begin(channel, offset, epoch, message)
            if refused is not None:
                failed = _output_error(message, *refused)
                self._in_channel(channel, lambda: self._deliver_output_error(failed))
            return
        event = to_message(message)
        self._in_channel(channel, lambda: self._deliver(event))

    def _deliver(self, message: Message) -> None:
        self.delivered += 1
        self._listeners.message(message)

    def _deliver_output_error(self, message: Message) -> None:
        self.output_errors += 1
        log.warning("livepush: %s: %s", message.data["code"], message.data["message"])
        self._listeners.message(message)

    # -- channel order behind outputs being reassembled ------------------------------------

    def _in_channel(self, channel: str, action: Callable[[], None]) -> None:
        """Run `action` now, or after the channel's outputs being reassembled."""
        if self.outputs.holding(channel):
            self.outputs.hold(channel, action)
        else:
            action()

    def _release(self, items: Iterable[Callable[[], None] | Assembly]) -> None:
        """Run, in order, what stopped waiting (finished outputs and held actions); an
        action may release more (it is queued behind, so the order holds)."""
        self._released.extend(items)
        if self._releasing:
            return
        self._releasing = True
        try:
            while self._released:
                item = self._released.popleft()
                if isinstance(item, Assembly):
                    self._finish_output(item)
                else:
                    item()
        finally:
            self._releasing = False

    def _finish_output(self, assembly: Assembly) -> None:
        if assembly.error is not None:
            self._deliver_output_error(_output_error(assembly.marker, *assembly.error))
            return
        self.outputs_reassembled += 1
        marker = assembly.marker
        raw = {
            "type": OUTPUT_DATA_TYPE,
            "data": assembly.data,
            "channel": assembly.channel,
            "offset": assembly.offset,
            "epoch": assembly.epoch,
            "marker": marker,
        }
        self._deliver(to_message(raw))

    def _abandon_outputs(self, channel: str, why: str) -> None:
        self._release(
            self.outputs.abandon(channel, OUTPUT_ABANDONED, f"{channel}: output abandoned: {why}")
        )

    def _leave(self, channel: str) -> None:
        if self._channels.leave(channel):
            self._abandon_outputs(channel, "unsubscribed")

    # -- answers to commands ---------------------------------------------------------------

    def _on_answer(self, kind: str, request_id: Any, data: Any) -> None:
        item = self._queue.answered(request_id)
        if item is None:
            log.debug("livepush: answer for unknown or expired command %r", request_id)
            return
        data = data if isinstance(data, dict) else {}
        if kind == "reply":
            self._apply_reply(item, data)
            if item.future is not None and not item.future.done():
                item.future.set_result(data)
            return
        code = str(data.get("code", "unknown"))
        self._apply_error(item, code)
        if item.future is not None and not item.future.done():
            item.future.set_exception(CommandError(code, str(data.get("message", "")), item.type))

    def _apply_reply(self, item: Outgoing, data: dict[str, Any]) -> None:
        body = item.body
        channels = self._channels
        if item.type in ("subscribe", "workflowOpened"):
            channel = data.get("channel")
            if not isinstance(channel, str):
                return
            channels.subscribe(channel)
            position = position_of(data)
            if position is None or data.get("alreadySubscribed"):
                return
            if data.get("recovered") is False:
                self._tracker.set(channel, position)
                self.recovery_failed(channel, position)
            elif data.get("recovered") is not True:
                self._tracker.advance(channel, position)
        elif item.type == "executionSnapshot":
            channel = data.get("channel")
            if not isinstance(channel, str):
                return
            if channel not in channels.own:
                channels.followed.pop(channel, None)
            channels.subscribe(channel)
            position = position_of(data)
            if position is not None:
                # later publications at or before the snapshot's offset are in it: dropped
                self._tracker.advance(channel, position)
        elif item.type == "unsubscribe":
            self._leave(str(body.get("channel")))
        elif item.type == "workflowClosed":
            self._leave(f"workflow:{body.get('workflowId')}")
        elif item.type == "refresh" and isinstance(body.get("token"), str):
            self._on_token(body["token"])

    def _apply_error(self, item: Outgoing, code: str) -> None:
        if item.type == "unsubscribe" and code == ErrorCode.NOT_SUBSCRIBED:
            self._leave(str(item.body.get("channel")))
        elif item.type == "subscribe":
            self._channels.untrack(str(item.body.get("channel")))


def _output_error(marker: Mapping[str, Any], code: str, text: str) -> Message:
    """The event that takes the place of an output that cannot be delivered."""
    output = marker.get("data")
    output = output if isinstance(output, Mapping) else {}
    data: dict[str, Any] = {"code": code, "message": text, "output": dict(output)}
    if isinstance(output.get("url"), str):
        data["url"] = output["url"]
    raw = {
        "type": OUTPUT_ERROR_TYPE,
        "data": data,
        "channel": marker.get("channel"),
        "offset": marker.get("offset"),
        "epoch": marker.get("epoch"),
        "marker": marker,
    }
    return to_message(raw)
