"""Helpers of the CRDT tests: waiting for a condition, documents' content."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from pycrdt import Doc, Map


async def eventually(condition: Callable[[], Any], timeout: float = 10.0) -> None:
    """Wait until `condition()` is true (polled), failing after `timeout` seconds."""
    async with asyncio.timeout(timeout):
        while not condition():  # noqa: ASYNC110 - polls state other tasks change
            await asyncio.sleep(0.01)


def canvas_of(doc: Doc[Any]) -> dict[str, Any]:
    """The `canvas` map of a document, as plain values."""
    return dict(doc.get("canvas", type=Map).to_py() or {})


def content(parts: list[bytes]) -> dict[str, str]:
    """The `canvas` map that a list of updates makes, values as strings."""
    doc: Doc[Any] = Doc()
    for part in parts:
        doc.apply_update(part)
    return {k: str(v) for k, v in canvas_of(doc).items()}
