"""python-socketio peer: socketio.AsyncServer on aiohttp, what a Python team would pick today.

    python bench/peers/socketio_server.py PORT [--loop uvloop|asyncio]

Clients speak Engine.IO v4 / Socket.IO v5 over a WebSocket on /socket.io/.  POST
/api/v1/publish with the livepush batch body {"messages":[{"type":"bench","data":{...}}, ...]}
calls ``await sio.emit(type, data)`` once per message, in order: python-socketio encodes the
packet once and queues the same string on every client's Engine.IO socket (each socket has
its own writer task).  The Authorization header is accepted and ignored.
"""

from __future__ import annotations

import json

import socketio
from _peercommon import add_common_routes, parse_args, run
from aiohttp import web

ARGS = parse_args("python-socketio AsyncServer (aiohttp) broadcaster")

sio = socketio.AsyncServer(
    async_mode="aiohttp",
    cors_allowed_origins="*",
    logger=False,
    engineio_logger=False,
)


async def publish(request: web.Request) -> web.Response:
    body = json.loads(await request.read())
    messages = body.get("messages", [])
    for m in messages:
        await sio.emit(m.get("type"), m.get("data"))
    return web.json_response({"ok": True, "messages": len(messages)})


def make_app() -> web.Application:
    app = web.Application()
    sio.attach(app)
    app.router.add_post("/api/v1/publish", publish)
    add_common_routes(app)
    return app


if __name__ == "__main__":
    run(make_app, ARGS, "python-socketio")
