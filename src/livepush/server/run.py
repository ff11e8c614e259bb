"""Running a node: listen, serve, and on SIGTERM drain gracefully (stop accepting, ask every
client to reconnect elsewhere with close code 1012 or an SSE `disconnect` event, flush their
queues, then exit)."""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import logging
import multiprocessing
import multiprocessing.process
import os
import secrets
import signal
import socket
import sys
import threading
import time

from aiohttp import web

from livepush.config import Config
from livepush.server.app import SERVICES, create_app
from livepush.server.runner import AppRunner

log = logging.getLogger("livepush")


def apply_development_defaults(config: Config) -> list[str]:
    """Generate a token secret and an API key when none is configured; returns the notes to
    print so a new user can mint a token and publish right away."""
    notes: list[str] = []
    if not config.has_token_key:
        config.jwt_secret = secrets.token_urlsafe(32)
        notes += [
            "No LIVEPUSH_JWT_SECRET (or public key / JWKS) configured: generated a development",
            "secret for this run. Mint a token for a user with:",
            # `=`: a generated secret may start with "-", which a separate argument would make
            # look like an option.
            f"  livepush token --user alice --workflows '*' --secret={config.jwt_secret}",
        ]
    if not config.api_key:
        config.api_key = secrets.token_urlsafe(24)
        notes += [
            "No LIVEPUSH_API_KEY configured: generated one for this run. Publish with:",
            f"  curl -s -X POST http://{config.host}:{config.port}/api/v1/publish \\",
            f"    -H 'Authorization: Bearer {config.api_key}' \\",
            "    -H 'Content-Type: application/json' \\",
            '    -d \'{"type":"hello","data":{"text":"hi"},"broadcast":true}\'',
        ]
    if notes and config.host not in ("127.0.0.1", "localhost", "::1"):
        notes.append("WARNING: generated credentials on a non-loopback address; set your own.")
    return notes


async def serve(
    config: Config, *, started: asyncio.Future[int] | None = None, reuse_port: bool = False
) -> None:
    """Serve until SIGTERM or SIGINT, then drain."""
    app = create_app(config)
    node = app[SERVICES].node
    runner = AppRunner(app, handler_cancellation=True, access_log=None, shutdown_timeout=5.0)
    await runner.setup()
    site = web.TCPSite(runner, config.host, config.port, backlog=4096, reuse_port=reuse_port)
    await site.start()
    port = next((addr[1] for addr in runner.addresses if isinstance(addr, tuple)), config.port)
    log.info(
        "listening on http://%s:%d (push endpoint ws://%s:%d%s/push, engine %s)",
        config.host,
        port,
        config.host,
        port,
        config.rest_prefix,
        config.engine,
    )
    # Everything allocated so far (modules, the application) lives as long as the process:
    # move it out of the cyclic GC's sight, so full collections only walk connection state.
    gc.collect()
    gc.freeze()
    if started is not None:
        started.set_result(port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
        log.info("draining %d connections (up to %.0fs)", len(node.hub), config.shutdown_timeout)
        node.draining = True
        await site.stop()
        await node.drain(config.shutdown_timeout)
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        await runner.cleanup()
        log.info("stopped")


def run(config: Config, *, reuse_port: bool = False) -> None:
    """Blocking entry point of `livepush serve`."""
    if config.workers > 1:
        supervise(config)
        return
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on POSIX
        asyncio.run(serve(config, reuse_port=reuse_port))
    else:
        uvloop.run(serve(config, reuse_port=reuse_port))


def _worker(config: Config) -> None:
    _die_with_parent()
    configure_logging(config.log_level)
    run(config, reuse_port=True)


def _die_with_parent() -> None:
    """Linux: get SIGTERM (and drain) when the supervisor dies, even by SIGKILL, instead of
    living on as an orphan that holds the port."""
    if not sys.platform.startswith("linux"):  # pragma: no cover
        return
    import ctypes

    pr_set_pdeathsig = 1
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(pr_set_pdeathsig, signal.SIGTERM)
    if os.getppid() == 1:  # the supervisor died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


def supervise(config: Config) -> None:
    """`--workers N`: N worker processes accept on one port (SO_REUSEPORT: the kernel spreads
    new connections over them) and share channels through the Redis engine. A worker that
    dies is restarted; SIGTERM or SIGINT drains every worker, then exits."""
    # Resolve the port once (for --port 0) with a bound, never listening, socket of the same
    # reuse-port group, held until exit so the port stays ours between worker restarts.
    family = socket.AF_INET6 if ":" in config.host else socket.AF_INET
    placeholder = socket.socket(family, socket.SOCK_STREAM)
    placeholder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    placeholder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    placeholder.bind((config.host, config.port))
    worker_config = dataclasses.replace(config, port=placeholder.getsockname()[1], workers=1)
    context = multiprocessing.get_context("spawn")
    stopping = threading.Event()

    def stop(signum: int, frame: object) -> None:
        stopping.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)

    def start(index: int) -> multiprocessing.process.BaseProcess:
        process = context.Process(
            target=_worker, args=(worker_config,), name=f"livepush-worker-{index}"
        )
        process.start()
        return process

    log.info(
        "supervising %d workers on http://%s:%d", config.workers, config.host, worker_config.port
    )
    workers = [start(i) for i in range(config.workers)]
    try:
        while not stopping.wait(0.5):
            for index, process in enumerate(workers):
                if not process.is_alive():
                    log.warning(
                        "worker %d (pid %s) exited with %s; restarting",
                        index,
                        process.pid,
                        process.exitcode,
                    )
                    workers[index] = start(index)
    finally:
        for process in workers:
            if process.is_alive() and process.pid is not None:
                os.kill(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + config.shutdown_timeout + 10
        for process in workers:
            process.join(max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                process.kill()
                process.join()
        placeholder.close()
        log.info("all workers stopped")


def configure_logging(level: str) -> None:
    """Plain, greppable log lines on stderr."""
    logging.basicConfig(
        level=level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
