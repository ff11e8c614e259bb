"""Resume positions as one string: `channel|epoch|offset` entries joined by commas.

This is the SSE event id (so a browser's `Last-Event-ID` carries every subscribed channel's
position back on reconnect) and the `lastEventId` query parameter on both transports. Channel
ids and epochs never contain `|` or `,`, so the format needs no escaping.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from livepush.protocol.channels import parse_channel
from livepush.protocol.envelope import StreamPosition
from livepush.protocol.errors import ErrorCode, ProtocolError

MAX_ENTRIES = 256
_OFFSET = re.compile(r"[0-9]{1,19}")  # ASCII digits only, and within a 64-bit offset


def format_positions(positions: Mapping[str, StreamPosition]) -> str:
    """Encode channel positions."""
    return ",".join(f"{channel}|{epoch}|{offset}" for channel, (epoch, offset) in positions.items())


def parse_positions(value: str) -> dict[str, StreamPosition]:
    """Decode channel positions, raising `ProtocolError` (`bad_request`, or `invalid_channel`
    for a malformed channel name) on a malformed value."""
    positions: dict[str, StreamPosition] = {}
    if not value.strip():
        return positions
    entries = value.split(",")
    if len(entries) > MAX_ENTRIES:
        raise ProtocolError(ErrorCode.BAD_REQUEST, f"more than {MAX_ENTRIES} resume positions")
    for entry in entries:
        parts = entry.strip().split("|")
        if len(parts) != 3 or not parts[1] or len(parts[1]) > 64 or not _OFFSET.fullmatch(parts[2]):
            raise ProtocolError(
                ErrorCode.BAD_REQUEST,
                f"invalid resume position {entry[:100]!r}: expected channel|epoch|offset",
            )
        parse_channel(parts[0])
        positions[parts[0]] = StreamPosition(parts[1], int(parts[2]))
    return positions
