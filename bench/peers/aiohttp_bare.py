"""Bare aiohttp broadcaster: the reference ceiling for the fan-out benchmark.

    python bench/peers/aiohttp_bare.py PORT [--writer transport|send_str] [--loop uvloop|asyncio]

Clients connect with a WebSocket upgrade on GET /ws.  POST /api/v1/publish with the livepush
batch body {"messages":[{"type":"bench","data":{...}}, ...]} serializes each message once,
builds ONE complete unmasked WebSocket text frame (header + payload bytes) and, with the
default ``--writer transport``, hands that same bytes object to ``transport.write()`` of every
connected socket - no per-client framing, no per-client await, no queue.  That is the least
work an asyncio server can do per delivery, hence "reference ceiling".  ``--writer send_str``
instead awaits ``ws.send_str(text)`` per client (aiohttp's normal API, frames per client).
The Authorization header is accepted and ignored.
"""

from __future__ import annotations

import asyncio
import json

from _peercommon import add_common_routes, parse_args, run
from aiohttp import web

ARGS = parse_args(
    "bare aiohttp broadcaster",
    lambda p: p.add_argument("--writer", choices=["transport", "send_str"], default="transport"),
)

# connected clients: WebSocketResponse -> its transport
clients: dict[web.WebSocketResponse, asyncio.Transport] = {}


def build_frame(payload: bytes) -> bytes:
    n = len(payload)
    if n < 126:
        header = bytes((0x81, n))
    elif n < 65536:
        header = bytes((0x81, 126)) + n.to_bytes(2, "big")
    else:
        header = bytes((0x81, 127)) + n.to_bytes(8, "big")
    return header + payload


async def ws_handler(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse(compress=False, autoping=True)
    await ws.prepare(request)
    transport = request.transport
    assert transport is not None
    clients[ws] = transport
    try:
        async for _msg in ws:
            pass
    finally:
        clients.pop(ws, None)
    return ws


async def publish(request: web.Request) -> web.Response:
    body = json.loads(await request.read())
    messages = body.get("messages", [])
    sent = 0
    for m in messages:
        text = json.dumps({"type": m.get("type"), "data": m.get("data")}, separators=(",", ":"))
        if ARGS.writer == "transport":
            frame = build_frame(text.encode())
            for transport in clients.values():
                if not transport.is_closing():
                    transport.write(frame)
                    sent += 1
        else:
            for ws in list(clients):
                if not ws.closed:
                    await ws.send_str(text)
                    sent += 1
    return web.json_response({"ok": True, "messages": len(messages), "sent": sent})


def make_app() -> web.Application:
    app = web.Application()
    app.router.add_get("/ws", ws_handler)
    app.router.add_post("/api/v1/publish", publish)
    add_common_routes(app)
    return app


if __name__ == "__main__":
    run(make_app, ARGS, f"aiohttp-bare({ARGS.writer})")
