"""What the client keeps for collaboration and executions: the rooms it is in (joined again
on every reconnect), and where a stored node output is fetched from."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any
from urllib.parse import urlsplit

from livepush.client.messages import Message


class Rooms:
    """The collaboration rooms the client is in: workflow id -> the tab's last state."""

    def __init__(self) -> None:
        self._rooms: dict[str, dict[str, Any] | None] = {}

    def __iter__(self) -> Iterator[str]:
        return iter(self._rooms)

    def opened(self, workflow_id: str, state: Mapping[str, Any] | None) -> None:
        """The room was joined (`workflowOpened` answered), with this first state."""
        self._rooms[workflow_id] = None if state is None else dict(state)

    def closed(self, workflow_id: str) -> None:
        """The room is left (`workflowClosed`)."""
        self._rooms.pop(workflow_id, None)

    def presence(self, workflow_id: str, state: Mapping[str, Any]) -> None:
        """The tab's state in a room it is in changed (`presenceUpdate`)."""
        if workflow_id in self._rooms:
            self._rooms[workflow_id] = dict(state)

    def rejoin(self) -> list[dict[str, Any]]:
        """The `workflowOpened` messages that join every room again after a reconnect (rooms
        are presence, not history: the workflow's channel itself is resumed)."""
        messages: list[dict[str, Any]] = []
        for workflow_id, state in self._rooms.items():
            room: dict[str, Any] = {"type": "workflowOpened", "workflowId": workflow_id}
            if state is not None:
                room["state"] = state
            messages.append(room)
        return messages


def output_url(output: Message | Mapping[str, Any] | str, base: str, bases: list[str]) -> str:
    """The URL to fetch a stored node output from (see `Client.fetch_output`): relative to
    `base`, or absolute on one of `bases` (the client's servers; `ValueError` otherwise)."""
    if isinstance(output, Message):
        output = output.data if isinstance(output.data, Mapping) else {}
    if isinstance(output, Mapping):
        if not isinstance(output.get("url"), str) and isinstance(output.get("data"), Mapping):
            output = output["data"]  # a raw message
        url = output.get("url") if isinstance(output, Mapping) else None
        if not isinstance(url, str):
            nested = output.get("output") if isinstance(output, Mapping) else None
            url = nested.get("url") if isinstance(nested, Mapping) else None
        if not isinstance(url, str):
            raise ValueError("no output url in the given message")
        output = url
    parts = urlsplit(output)
    if parts.scheme or parts.netloc:
        absolute = output if parts.scheme else f"{urlsplit(base).scheme}:{output}"
        if _origin(absolute) not in {_origin(b) for b in bases}:
            raise ValueError(
                f"refusing to send the token to {output}: not one of the client's servers"
            )
        return absolute
    return f"{base}{output}" if output.startswith("/") else f"{base}/{output}"


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    port = parts.port or {"http": 80, "https": 443}.get(scheme)
    return (scheme, (parts.hostname or "").lower(), port)
