"""A scripted server for client tests that do not need a real one.

`FakeServer` replaces the client's dialing (`Client._dial`, once the token is obtained) with
in-memory connections: the test pushes server messages into the current connection, which
the client reads through its ordinary path (`_serve` -> `_handle` -> ...), and sees what the
client sent. Commands are answered by `respond` (WebSocket: down the connection, in order;
SSE: as the POST's answer, through the client's POST path). A cut ends the connection as a
network failure would.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from livepush.client import Client, Message, parse_positions
from livepush.client.transports import Connection, Frame, SseConnection

Responder = Callable[[dict[str, Any]], dict[str, Any] | None]


class FakeWebSocket(Connection):
    transport = "websocket"
    max_batch = 1000

    def __init__(self, url: str, server: FakeServer) -> None:
        super().__init__(url)
        self.server = server
        self.incoming: asyncio.Queue[Frame | None] = asyncio.Queue()
        self.sent: list[dict[str, Any]] = []

    def push(self, message: dict[str, Any]) -> None:
        self.incoming.put_nowait(Frame(message=message))

    def cut(self) -> None:
        self.incoming.put_nowait(None)

    async def receive(self) -> Frame | None:
        frame = await self.incoming.get()
        if frame is None:
            self.note_close(1006, "cut by the test")
        return frame

    async def send(self, messages: list[dict[str, Any]]) -> list[dict[str, Any]] | None:
        self.sent.extend(messages)
        for message in messages:
            answer = self.server.respond(message)
            if answer is not None:
                self.push(answer)
        return None

    async def close(self) -> None:
        self.note_close(1000, "closed by the client")
        self.incoming.put_nowait(None)


class FakeSse(SseConnection):
    """An SSE connection whose command POSTs are answered by the fake server."""

    def __init__(self, url: str, server: FakeServer) -> None:
        Connection.__init__(self, url)
        self.server = server
        self.incoming: asyncio.Queue[Frame | None] = asyncio.Queue()
        self.sent: list[dict[str, Any]] = []
        self.token = "token"
        self.push_ref = server.push_ref
        self.post_timeout = 10.0

    push = FakeWebSocket.push
    cut = FakeWebSocket.cut
    receive = FakeWebSocket.receive

    async def send(self, messages: list[dict[str, Any]]) -> list[dict[str, Any]] | None:
        self.sent.extend(messages)
        answers = [self.server.respond(message) for message in messages]
        return [answer for answer in answers if answer is not None]

    async def close(self) -> None:
        self.note_close(1000, "closed by the client")
        self.incoming.put_nowait(None)


class FakeServer:
    """Connections handed to one client; `current` is the newest."""

    def __init__(self, client: Client, transport: str = "websocket") -> None:
        self.client = client
        self.push_ref = client.push_ref
        self.transport = transport
        self.connections: list[FakeWebSocket | FakeSse] = []
        #: The handshake parameters of each connection attempt.
        self.handshakes: list[dict[str, str]] = []
        self.responders: dict[str, Responder] = {"ping": lambda m: reply(m, {})}
        self.messages: list[Message] = []
        client.on("*", self.messages.append)
        #: The token of each connection attempt.
        self.tokens: list[str] = []
        client._dial = self._dial  # type: ignore[method-assign]

    async def _dial(self, url: str, params: dict[str, str], token: str) -> Connection:
        self.handshakes.append(params)
        self.tokens.append(token)
        connection: FakeWebSocket | FakeSse = (
            FakeSse(url, self) if self.transport == "sse" else FakeWebSocket(url, self)
        )
        connection.push(self.connected(params))
        self.connections.append(connection)
        return connection

    def connected(self, params: dict[str, str]) -> dict[str, Any]:
        """`connected`, recovering every resumed channel exactly (nothing missed)."""
        positions = parse_positions(params.get("lastEventId", ""))
        wanted = [c for c in params.get("channels", "").split(",") if c]
        own = [f"push:{self.push_ref}", "user:u1", "system"]
        entries = []
        for channel in dict.fromkeys([*own, *wanted, *positions]):
            position = positions.get(channel)
            if position is None:
                entries.append({"channel": channel, "epoch": "e1", "offset": 0})
            else:
                entries.append(
                    {
                        "channel": channel,
                        "epoch": position.epoch,
                        "offset": position.offset,
                        "recovered": True,
                        "missed": 0,
                    }
                )
        return {
            "type": "connected",
            "data": {
                "protocol": 1,
                "pushRef": self.push_ref,
                "userId": "u1",
                "pingInterval": 25,
                "expiresAt": None,
                "channels": entries,
                "refused": [],
            },
        }

    def respond(self, message: dict[str, Any]) -> dict[str, Any] | None:
        responder = self.responders.get(str(message.get("type")))
        return responder(message) if responder is not None else None

    @property
    def current(self) -> FakeWebSocket | FakeSse:
        return self.connections[-1]

    def push(self, message: dict[str, Any]) -> None:
        self.current.push(message)

    def of_type(self, *types: str) -> list[Message]:
        return [m for m in self.messages if m.type in types]


def reply(command: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
    return {"type": "reply", "id": command.get("id"), "data": data}


def publication(
    channel: str, offset: int, message_type: str = "tick", data: Any = None, epoch: str = "e1"
) -> dict[str, Any]:
    return {
        "type": message_type,
        "data": {"n": offset} if data is None else data,
        "channel": channel,
        "offset": offset,
        "epoch": epoch,
    }
