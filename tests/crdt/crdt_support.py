"""Helpers of the CRDT tests: waiting for a condition, documents' content, a real Yjs client
in Node."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable
from pathlib import Path
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


class YjsNodeClient:
    """A real npm `yjs` + `y-websocket` client in a Node process
    (tests/interop/node/yjs-client.mjs), driven by JSON commands."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.events: list[dict[str, Any]] = []
        self._answers: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._next_id = 0
        self._reader = asyncio.get_running_loop().create_task(self._read())
        self.stderr = b""

    @classmethod
    async def start(cls, script: Path, server_url: str, room: str, token: str) -> YjsNodeClient:
        """`server_url` is what a y-websocket provider is given: `ws://HOST:PORT/rest/crdt`."""
        process = await asyncio.create_subprocess_exec(
            "node",
            str(script),
            server_url,
            room,
            token,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        return cls(process)

    async def _read(self) -> None:
        assert self.process.stdout is not None
        while line := await self.process.stdout.readline():
            message = json.loads(line)
            answer = self._answers.pop(message.get("id", -1), None)
            if answer is not None:
                answer.set_result(message)
            else:
                self.events.append(message)
        for answer in self._answers.values():
            if not answer.done():
                answer.set_exception(ConnectionError("the Node client exited"))

    async def command(self, op: str, timeout: float = 20.0, **fields: Any) -> dict[str, Any]:
        """Send a command; its answer."""
        assert self.process.stdin is not None
        self._next_id += 1
        answer = self._answers[self._next_id] = asyncio.get_running_loop().create_future()
        line = json.dumps({"op": op, "id": self._next_id, **fields}) + "\n"
        self.process.stdin.write(line.encode())
        await self.process.stdin.drain()
        async with asyncio.timeout(timeout):
            return await answer

    async def synced(self) -> None:
        """Wait until the provider has synced with its server."""
        await eventually(
            lambda: any(e.get("event") == "synced" and e["synced"] for e in self.events), 20
        )

    async def canvas(self) -> dict[str, Any]:
        """The client's canvas map."""
        return dict((await self.command("dump"))["canvas"])

    async def exit(self) -> None:
        """Destroy the provider and the doc; the process exits by itself."""
        if self.process.returncode is None:
            with contextlib.suppress(ConnectionError, BrokenPipeError, TimeoutError):
                await self.command("exit", timeout=5)
            try:
                async with asyncio.timeout(10):
                    await self.process.wait()
            except TimeoutError:
                self.process.kill()
                await self.process.wait()
        await self._reader
        if self.process.stderr is not None:
            self.stderr = await self.process.stderr.read()
