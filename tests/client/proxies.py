"""Real network middlemen for the client tests: a TCP proxy that cuts its connections on
demand, and an HTTP reverse proxy that refuses WebSocket upgrades but forwards SSE."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import aiohttp
from aiohttp import web


class TcpProxy:
    """Forwards TCP connections from a loopback port to `upstream` (`http://host:port`).

    - `cut()` resets every open connection (both sides), as a network failure would;
    - `refuse = True` makes it accept and immediately reset new connections (a server that
      cannot be reached), until set back to False;
    - `stall()` holds the bytes in both directions (a frozen network) until `resume()`."""

    def __init__(self, upstream: str) -> None:
        parts = urlsplit(upstream)
        assert parts.hostname is not None and parts.port is not None
        self._upstream = (parts.hostname, parts.port)
        self._server: asyncio.Server | None = None
        self._pairs: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._flowing = asyncio.Event()
        self._flowing.set()
        self.refuse = False
        #: Connections accepted and forwarded, and connections reset by `cut()`.
        self.accepted = 0
        self.cut_connections = 0
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> TcpProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    @property
    def open_connections(self) -> int:
        return len(self._pairs)

    def cut(self) -> int:
        """Reset every open connection; returns how many were cut."""
        pairs = list(self._pairs)
        self._pairs.clear()
        for client, upstream in pairs:
            client.transport.abort()
            upstream.transport.abort()
        self.cut_connections += len(pairs)
        return len(pairs)

    def stall(self) -> None:
        self._flowing.clear()

    def resume(self) -> None:
        self._flowing.set()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.refuse:
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self._upstream)
        except OSError:
            writer.transport.abort()
            return
        self.accepted += 1
        pair = (writer, up_writer)
        self._pairs.add(pair)
        for source, sink in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.get_running_loop().create_task(self._pump(source, sink, pair))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pump(
        self,
        source: asyncio.StreamReader,
        sink: asyncio.StreamWriter,
        pair: tuple[asyncio.StreamWriter, asyncio.StreamWriter],
    ) -> None:
        try:
            while True:
                data = await source.read(65536)
                if not data:
                    break
                await self._flowing.wait()
                if sink.transport.is_closing():
                    break
                sink.write(data)
                await sink.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            # one side ended: end both, as a real TCP middlebox would
            if pair in self._pairs:
                self._pairs.discard(pair)
                for writer in pair:
                    writer.transport.abort()


@contextlib.asynccontextmanager
async def tcp_proxy(upstream: str) -> AsyncIterator[TcpProxy]:
    proxy = await TcpProxy(upstream).start()
    try:
        yield proxy
    finally:
        await proxy.stop()


class SseOnlyProxy:
    """An HTTP reverse proxy (aiohttp) in front of `upstream` that answers every WebSocket
    upgrade with 400, as proxies configured without upgrade support do, and forwards
    everything else, event streams included (streamed chunk by chunk)."""

    def __init__(self, upstream: str) -> None:
        self._upstream = upstream.rstrip("/")
        self.refused_upgrades = 0
        self.streams = 0
        self.posts = 0
        self._runner: web.AppRunner | None = None
        self._client: aiohttp.ClientSession | None = None
        self.url = ""

    async def start(self) -> SseOnlyProxy:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._forward)
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"
        self._client = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None))
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._client is not None:
            await self._client.close()

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        if request.headers.get("Upgrade", "").lower() == "websocket":
            self.refused_upgrades += 1
            return web.Response(status=400, text="this proxy does not forward upgrades")
        assert self._client is not None
        headers = {
            name: value
            for name, value in request.headers.items()
            if name.lower() in ("authorization", "accept", "content-type", "last-event-id")
        }
        body = await request.read()
        if request.method == "POST":
            self.posts += 1
        async with self._client.request(
            request.method,
            self._upstream + request.path_qs,
            headers=headers,
            data=body or None,
        ) as upstream:
            content_type = upstream.headers.get("Content-Type", "")
            if not content_type.startswith("text/event-stream"):
                return web.Response(
                    status=upstream.status,
                    body=await upstream.read(),
                    headers={"Content-Type": content_type} if content_type else None,
                )
            self.streams += 1
            response = web.StreamResponse(
                status=upstream.status, headers={"Content-Type": content_type}
            )
            await response.prepare(request)
            async for chunk in upstream.content.iter_any():
                await response.write(chunk)
            return response


@contextlib.asynccontextmanager
async def sse_only_proxy(upstream: str) -> AsyncIterator[SseOnlyProxy]:
    proxy = await SseOnlyProxy(upstream).start()
    try:
        yield proxy
    finally:
        await proxy.stop()
