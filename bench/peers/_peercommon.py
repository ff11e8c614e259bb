"""Shared plumbing for the Python benchmark peers (argument parsing, event loop, serving)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import signal
from collections.abc import Callable

from aiohttp import web


def parse_args(description: str, extra: Callable[[argparse.ArgumentParser], None] | None = None):
    p = argparse.ArgumentParser(description=description)
    p.add_argument("port", type=int)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument(
        "--loop",
        choices=["uvloop", "asyncio"],
        default="uvloop",
        help="event loop implementation (default uvloop, like livepush)",
    )
    if extra is not None:
        extra(p)
    return p.parse_args()


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"ok": True})


async def debug_gc(request: web.Request) -> web.Response:
    """Full collection; the harness calls this before reading RSS for the memory case."""
    return web.json_response({"ok": True, "collected": gc.collect()})


def add_common_routes(app: web.Application) -> None:
    app.router.add_get("/healthz", healthz)
    app.router.add_post("/debug/gc", debug_gc)


async def _serve(app: web.Application, host: str, port: int, name: str) -> None:
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=4096)
    await site.start()
    print(f"{name} listening on {host}:{port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    with contextlib.suppress(Exception):  # shutting down a benchmark peer: best effort
        await asyncio.wait_for(runner.cleanup(), timeout=3)


def run(app_factory: Callable[[], web.Application], args: argparse.Namespace, name: str) -> None:
    async def main() -> None:
        await _serve(app_factory(), args.host, args.port, name)

    if args.loop == "uvloop":
        import uvloop

        uvloop.run(main())
    else:
        asyncio.run(main())
