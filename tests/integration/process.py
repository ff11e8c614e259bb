"""Run `livepush serve` as a real process, the way users run it."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

_LISTENING = re.compile(rb"listening on http://[^:]+:(\d+)")


@dataclass
class ServerProcess:
    """A running `livepush serve` process and what it printed at start."""

    process: asyncio.subprocess.Process
    port: int
    banner: str
    #: Everything printed after the banner (for failure messages).
    output: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def kill(self) -> None:
        """SIGKILL: the node dies without a word to anyone."""
        if self.process.returncode is None:
            self.process.kill()

    async def stop(self, timeout: float = 15.0) -> int:
        if self.process.returncode is None:
            self.process.terminate()
        return await asyncio.wait_for(self.process.wait(), timeout)


@contextlib.asynccontextmanager
async def serve_process(
    *args: str, env: dict[str, str] | None = None
) -> AsyncIterator[ServerProcess]:
    """Start `livepush serve --port 0 ...`, wait for its listening line, stop it at the end."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("LIVEPUSH_")}
    environ.update(env or {})
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "livepush.cli",
        "serve",
        "--port",
        "0",
        *args,
        env=environ,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    assert process.stdout is not None
    banner = b""
    async with asyncio.timeout(20):
        while True:
            line = await process.stdout.readline()
            if not line:
                raise RuntimeError(f"server exited before listening:\n{banner.decode()}")
            banner += line
            match = _LISTENING.search(line)
            if match:
                break
    running = ServerProcess(process, int(match.group(1)), banner.decode())
    drain = asyncio.create_task(_drain(process.stdout, running.output))
    try:
        yield running
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        # read to the end of the output, so the pipe is closed while the loop runs (workers
        # that inherited it may still be exiting)
        try:
            await asyncio.wait_for(drain, 10)
        except TimeoutError:
            drain.cancel()


async def _drain(stream: asyncio.StreamReader, output: list[str]) -> None:
    while line := await stream.readline():
        output.append(line.decode(errors="replace"))
        del output[:-200]
