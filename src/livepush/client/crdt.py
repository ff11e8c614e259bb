"""A Python client of livepush's CRDT endpoint: keeps a pycrdt `Doc` in sync with a document.

```python
from pycrdt import Doc, Map
from livepush.client.crdt import CrdtClient, crdt_url

doc = Doc()
canvas = doc.get("canvas", type=Map)
async with CrdtClient(crdt_url("http://127.0.0.1:5680", "42"), doc, token=token) as client:
    await client.synced.wait()      # the server's content is in `doc`
    canvas["node-1"] = "x"          # sent to the server, which passes it on
    await client.flush()            # the server has stored everything sent so far
```

It speaks y-protocols like y-websocket: its sync step 1 on connecting (the server answers with
what the doc lacks), its own step 2 answering the server's step 1, then every local change as
an update. `flush` sends a step 1 and waits for its answer: the server handles one
connection's messages in order and stores an update before passing it on, so once the answer is
in, every update sent before is stored. There is no automatic reconnect: open a new client on
the same `Doc` (to any node); the two step 1s bring both sides up to date.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any
from urllib.parse import quote

import aiohttp
import msgspec
from pycrdt import Decoder, Doc, Subscription, TransactionEvent

from livepush.protocol.crdt import (
    MESSAGE_AUTH,
    MESSAGE_AWARENESS,
    MESSAGE_QUERY_AWARENESS,
    MESSAGE_SYNC,
    QUERY_AWARENESS,
    SYNC_STEP1,
    SYNC_STEP2,
    SYNC_UPDATE,
    AwarenessEntry,
    Dialect,
    decode_awareness,
    encode_awareness,
    sync_step1,
    sync_step2,
)

log = logging.getLogger(__name__)


def crdt_url(base: str, doc_id: str, *, rest_prefix: str = "/rest") -> str:
    """The WebSocket URL of a document on the server at `base` (`http://` or `ws://`)."""
    ws_base = base.replace("https://", "wss://", 1).replace("http://", "ws://", 1).rstrip("/")
    return f"{ws_base}{rest_prefix}/crdt/{quote(doc_id, safe='')}"


class CrdtClient:
    """One connection keeping `doc` in sync with the document at `url`."""

    def __init__(
        self,
        url: str,
        doc: Doc[Any] | None = None,
        *,
        token: str | None = None,
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        self.url = url
        self.doc: Doc[Any] = doc if doc is not None else Doc()
        self.token = token
        #: Set once the server's content has been applied (its answer to our step 1).
        self.synced = asyncio.Event()
        #: Set when the connection has ended; `close_code` / `close_reason` say why.
        self.closed = asyncio.Event()
        self.close_code: int | None = None
        self.close_reason = ""
        #: Reasons of the server's "permission denied" messages (`read_only`, ...).
        self.denied: list[str] = []
        #: Other clients' awareness states (clientID -> state), as the server relays them.
        self.peers: dict[int, Any] = {}
        self._session = session
        self._own_session = session is None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._outbox: asyncio.Queue[bytes | None] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []
        self._subscription: Subscription | None = None
        self._applying = False
        self._step1_sent = 0
        self._step2_received = 0
        self._answers = asyncio.Condition()
        self._clock = 0

    async def __aenter__(self) -> CrdtClient:
        await self.connect()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def connect(self) -> None:
        """Open the connection and start syncing (raises `aiohttp.WSServerHandshakeError`
        when the server refuses, with its HTTP status)."""
        if self._session is None:
            self._session = aiohttp.ClientSession()
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        try:
            self._ws = await self._session.ws_connect(self.url, headers=headers, max_msg_size=0)
        except BaseException:
            await self._close_session()
            raise
        self._subscription = self.doc.observe(self._on_local_change)
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._read()), loop.create_task(self._write())]
        self._send_step1()

    async def flush(self) -> None:
        """Return once the server has handled (stored) every update sent before (bound it
        with `asyncio.timeout`)."""
        target = self._send_step1()
        async with self._answers:
            await self._answers.wait_for(
                lambda: self._step2_received >= target or self.closed.is_set()
            )
        if self._step2_received < target:
            raise ConnectionError(f"connection closed ({self.close_code}) {self.close_reason}")

    def set_awareness(self, state: dict[str, Any] | None) -> None:
        """Announce this client's awareness state (None: gone)."""
        self._clock += 1
        text = "null" if state is None else msgspec.json.encode(state).decode()
        payload = encode_awareness([AwarenessEntry(self.doc.client_id, self._clock, text)])
        self._outbox.put_nowait(Dialect.YJS.awareness(payload))

    def query_awareness(self) -> None:
        """Ask the server for every awareness state it knows."""
        self._outbox.put_nowait(QUERY_AWARENESS)

    async def close(self) -> None:
        """Send what is queued, then close the connection."""
        if self._subscription is not None:
            self.doc.unobserve(self._subscription)
            self._subscription = None
        if self._ws is not None and not self._ws.closed:
            self._outbox.put_nowait(None)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(5):
                    await asyncio.gather(*self._tasks[1:], return_exceptions=True)
            await self._ws.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._close_session()
        self.closed.set()

    async def _close_session(self) -> None:
        if self._own_session and self._session is not None:
            await self._session.close()
            self._session = None

    def _send_step1(self) -> int:
        self._step1_sent += 1
        self._outbox.put_nowait(sync_step1(self.doc.get_state()))
        return self._step1_sent

    def _on_local_change(self, event: TransactionEvent) -> None:
        if not self._applying:
            self._outbox.put_nowait(Dialect.YJS.update(event.update))

    def _apply(self, update: bytes) -> None:
        self._applying = True
        try:
            self.doc.apply_update(update)
        finally:
            self._applying = False

    async def _write(self) -> None:
        assert self._ws is not None
        while (frame := await self._outbox.get()) is not None:
            await self._ws.send_bytes(frame)

    async def _read(self) -> None:
        ws = self._ws
        assert ws is not None
        try:
            while True:
                message = await ws.receive()
                if message.type is aiohttp.WSMsgType.BINARY:
                    await self._on_message(message.data)
                elif message.type is aiohttp.WSMsgType.CLOSE:
                    self.close_reason = str(message.extra or "")
                    break
                elif message.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
                    break
        finally:
            self.close_code = ws.close_code
            self.closed.set()
            async with self._answers:
                self._answers.notify_all()

    async def _on_message(self, data: bytes) -> None:
        decoder = Decoder(data)
        kind = decoder.read_var_uint()
        if kind == MESSAGE_SYNC:
            step = decoder.read_var_uint()
            payload = decoder.read_message() or b""
            if step == SYNC_STEP1:
                self._outbox.put_nowait(sync_step2(self.doc.get_update(payload)))
            elif step in (SYNC_STEP2, SYNC_UPDATE):
                self._apply(payload)
                if step == SYNC_STEP2:
                    self.synced.set()
                    async with self._answers:
                        self._step2_received += 1
                        self._answers.notify_all()
        elif kind == MESSAGE_AWARENESS:
            for entry in decode_awareness(decoder.read_message() or b""):
                if entry.client_id == self.doc.client_id:
                    continue
                if entry.gone:
                    self.peers.pop(entry.client_id, None)
                else:
                    self.peers[entry.client_id] = msgspec.json.decode(entry.state)
        elif kind == MESSAGE_AUTH:
            decoder.read_var_uint()  # 0: permission denied
            self.denied.append(decoder.read_var_string())
        elif kind == MESSAGE_QUERY_AWARENESS:
            pass  # a server never asks
        else:
            log.warning("unknown CRDT message type %d from %s", kind, self.url)
