"""The two ways to reach a livepush server: a WebSocket, or an SSE stream plus POSTed commands.

Both present the same `Connection`: `receive()` returns the server's messages in order (and, for
SSE, the id-only events that carry resume positions), `send()` writes client messages (over
SSE: one POST whose JSON array of replies is returned), `close()` ends the connection. A
refused handshake raises `HandshakeFailed` with the HTTP status and the server's error code.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import ssl as ssl_module
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, Literal

import aiohttp
import msgspec

from livepush.client.sse import SseParser
from livepush.protocol.commands import MAX_COMMANDS_PER_POST
from livepush.protocol.errors import CloseCode

TransportName = Literal["websocket", "sse"]
#: "auto": WebSocket, falling back to SSE for a URL whose WebSocket handshake is refused.
TransportMode = Literal["auto", "websocket", "sse"]

log = logging.getLogger(__name__)

_decode = msgspec.json.Decoder().decode
_encode = msgspec.json.encode


class HandshakeFailed(Exception):
    """The server (or something in front of it) answered the connection request with another
    status than 101 (WebSocket) or 200 (SSE).

    `code` and `message` come from livepush's JSON error body when there is one."""

    def __init__(
        self,
        status: int,
        code: str | None,
        message: str,
        *,
        transport: TransportName,
    ) -> None:
        detail = f"{code}: {message}" if code else message
        super().__init__(f"{transport} handshake refused with HTTP {status} ({detail})")
        self.status = status
        self.code = code
        self.message = message
        self.transport = transport


class PostFailed(Exception):
    """An SSE command POST was answered with an error status."""

    def __init__(self, status: int, code: str | None, message: str) -> None:
        super().__init__(f"command POST refused with HTTP {status} ({code}: {message})")
        self.status = status
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True)
class Frame:
    """One thing read from a connection: a decoded server message, or (SSE) an id-only event
    whose `mark` holds the resume positions it carries."""

    message: dict[str, Any] | None = None
    mark: str | None = None


def _error_fields(body: bytes) -> tuple[str | None, str]:
    """The `{"error": {"code", "message"}}` of a livepush error body, if it is one."""
    try:
        parsed = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        text = body[:200].decode("utf-8", errors="replace").strip()
        return None, text or "no livepush error body"
    if isinstance(parsed, dict) and isinstance(parsed.get("error"), dict):
        error = parsed["error"]
        code = error.get("code")
        return (code if isinstance(code, str) else None), str(error.get("message", ""))
    return None, "no livepush error body"


def http_base(base: str) -> str:
    """A server's base URL over http(s), without a trailing slash (ws:// and wss:// bases
    are accepted)."""
    if base.startswith("ws://"):
        base = "http://" + base[5:]
    elif base.startswith("wss://"):
        base = "https://" + base[6:]
    return base.rstrip("/")


def push_url(base: str, rest_prefix: str) -> str:
    """`{base}{rest_prefix}/push` over http(s) (ws:// and wss:// bases are accepted)."""
    prefix = "/" + rest_prefix.strip("/") if rest_prefix.strip("/") else ""
    return f"{http_base(base)}{prefix}/push"


class RequestFailed(Exception):
    """A plain HTTP request (not the push connection) failed: an error status (`code` and
    `message` from livepush's JSON error body), an answer that is not JSON, or the network
    (`status` None)."""

    def __init__(self, status: int | None, code: str | None, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


class Connection(ABC):
    """One open connection to a server."""

    transport: TransportName
    #: Most messages `send()` takes at once.
    max_batch: int

    def __init__(self, url: str) -> None:
        self.url = url
        #: The close code the connection ended with (None while open, 1006 for a cut).
        self.close_code: int | None = None
        self.close_reason = ""

    @abstractmethod
    async def receive(self) -> Frame | None:
        """The next frame; None once the connection has ended (see `close_code`)."""

    @abstractmethod
    async def send(self, messages: list[dict[str, Any]]) -> list[dict[str, Any]] | None:
        """Write messages in order. SSE returns the POST's replies; WebSocket replies come
        through `receive()`. Raises when the connection is broken."""

    @abstractmethod
    async def close(self) -> None:
        """End the connection (idempotent)."""

    def set_idle_timeout(self, seconds: float | None) -> None:  # noqa: B027 - optional
        """Consider the connection dead when nothing arrives for this long (SSE)."""

    def note_close(self, code: int | None, reason: str) -> None:
        """Record why the connection ends (the first reason wins)."""
        if self.close_code is None:
            self.close_code = code
            self.close_reason = reason


class Dialer:
    """Opens connections over one aiohttp session; captures the bodies of refused WebSocket
    handshakes (aiohttp discards them) so refusals carry the server's error code."""

    def __init__(
        self,
        *,
        mode: TransportMode = "auto",
        headers: Mapping[str, str] | None = None,
        ssl: ssl_module.SSLContext | bool = True,
        heartbeat: float | None = 30.0,
        max_message_size: int = 64 * 1024 * 1024,
    ) -> None:
        self._headers = dict(headers or {})
        self._ssl = ssl
        self._heartbeat = heartbeat
        self._max_message_size = max_message_size
        self._refusal_body: bytes | None = None
        self._session: aiohttp.ClientSession | None = None
        self._mode: TransportMode = mode
        self._chosen: dict[str, TransportName] = {}
        self._websocket_worked: set[str] = set()

    @property
    def session(self) -> aiohttp.ClientSession:
        """The aiohttp session (created on first use, inside the running loop)."""
        if self._session is None or self._session.closed:
            trace = aiohttp.TraceConfig()
            trace.on_request_end.append(self._on_request_end)
            self._session = aiohttp.ClientSession(
                trace_configs=[trace], timeout=aiohttp.ClientTimeout(total=None)
            )
        return self._session

    async def close(self) -> None:
        """Close the aiohttp session."""
        if self._session is not None and not self._session.closed:
            await self._session.close()

    async def _on_request_end(
        self,
        session: aiohttp.ClientSession,
        context: SimpleNamespace,
        params: aiohttp.TraceRequestEndParams,
    ) -> None:
        response = params.response
        if (
            params.method == "GET"
            and response.status >= 300
            and params.headers.get("Upgrade", "").lower() == "websocket"
        ):
            try:
                async with asyncio.timeout(2.0):
                    self._refusal_body = await response.read()
            except (aiohttp.ClientError, TimeoutError):
                self._refusal_body = None

    def _auth_headers(self, token: str) -> dict[str, str]:
        return {**self._headers, "Authorization": f"Bearer {token}"}

    async def open(self, url: str, params: Mapping[str, str], token: str) -> Connection:
        """Open a connection with the transport of `mode`; "auto": WebSocket, then SSE for a
        URL whose WebSocket handshake is refused and that never had a WebSocket (the choice
        is remembered per URL). Raises `HandshakeFailed`."""
        mode = self._mode if self._mode != "auto" else self._chosen.get(url, "websocket")
        if mode == "sse":
            connection: Connection = await self.open_sse(url, params, token)
            return connection
        try:
            connection = await self.open_websocket(url, params, token)
        except HandshakeFailed as exc:
            if self._mode != "auto" or url in self._websocket_worked:
                raise
            log.info("livepush: WebSocket refused by %s (%s); trying SSE", url, exc)
            connection = await self.open_sse(url, params, token)
            self._chosen[url] = "sse"
            return connection
        self._websocket_worked.add(url)
        self._chosen[url] = "websocket"
        return connection

    async def open_websocket(
        self, url: str, params: Mapping[str, str], token: str
    ) -> WebSocketConnection:
        """Open a WebSocket; raises `HandshakeFailed` on a non-101 answer."""
        self._refusal_body = None
        try:
            ws = await self.session.ws_connect(
                url,
                params=dict(params),
                headers=self._auth_headers(token),
                heartbeat=self._heartbeat,
                autoclose=True,
                autoping=True,
                max_msg_size=self._max_message_size,
                timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=2.0),
                ssl=self._ssl,
            )
        except aiohttp.WSServerHandshakeError as exc:
            body, self._refusal_body = self._refusal_body, None
            if exc.status == 101:  # a 101 with bad upgrade headers: not a usable WebSocket
                raise HandshakeFailed(101, None, exc.message, transport="websocket") from exc
            code, message = _error_fields(body) if body is not None else (None, exc.message)
            raise HandshakeFailed(exc.status, code, message, transport="websocket") from exc
        return WebSocketConnection(url, ws)

    async def open_sse(self, url: str, params: Mapping[str, str], token: str) -> SseConnection:
        """Open an event stream; raises `HandshakeFailed` unless the answer is a 200 stream."""
        headers = {
            **self._auth_headers(token),
            "Accept": "text/event-stream",
            "Cache-Control": "no-cache",
        }
        response = await self.session.get(
            url, params=dict(params), headers=headers, ssl=self._ssl, read_until_eof=True
        )
        content_type = response.headers.get("Content-Type", "")
        if response.status != 200 or not content_type.startswith("text/event-stream"):
            try:
                async with asyncio.timeout(2.0):
                    body = await response.read()
            except (aiohttp.ClientError, TimeoutError):
                body = b""
            finally:
                response.release()
            if response.status == 200:
                message = f"answered {content_type or 'no content type'}, not an event stream"
                raise HandshakeFailed(200, None, message, transport="sse")
            code, message = _error_fields(body)
            raise HandshakeFailed(response.status, code, message, transport="sse")
        return SseConnection(url, response, self, token, params["pushRef"])

    async def post_commands(
        self,
        url: str,
        push_ref: str,
        token: str,
        messages: list[dict[str, Any]],
        deadline: float,
    ) -> list[dict[str, Any]]:
        """POST commands of an SSE connection; returns the replies and errors, in order."""
        async with self.session.post(
            url,
            params={"pushRef": push_ref},
            data=_encode(messages),
            headers={**self._auth_headers(token), "Content-Type": "application/json"},
            ssl=self._ssl,
            timeout=aiohttp.ClientTimeout(total=deadline),
        ) as response:
            body = await response.read()
            if response.status != 200:
                code, message = _error_fields(body)
                raise PostFailed(response.status, code, message)
        replies = _decode(body) if body else []
        if not isinstance(replies, list):
            raise PostFailed(200, None, "the POST answer is not a JSON array")
        return [reply for reply in replies if isinstance(reply, dict)]

    async def get_json(self, url: str, token: str, connect_seconds: float | None) -> Any:
        """GET a JSON document with the token (and the extra headers); raises
        `RequestFailed`. Only connecting is bounded (`connect_seconds`)."""
        try:
            async with self.session.get(
                url,
                headers={**self._auth_headers(token), "Accept": "application/json"},
                ssl=self._ssl,
                timeout=aiohttp.ClientTimeout(total=None, connect=connect_seconds),
            ) as response:
                body = await response.read()
                status = response.status
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise RequestFailed(None, None, f"GET {url} failed: {exc!r}") from exc
        if status != 200:
            code, message = _error_fields(body)
            raise RequestFailed(status, code, f"GET {url}: HTTP {status} ({code}: {message})")
        try:
            return _decode(body)
        except msgspec.DecodeError as exc:
            raise RequestFailed(status, "invalid_json", f"GET {url}: not JSON: {exc}") from exc


class WebSocketConnection(Connection):
    """A WebSocket to the push endpoint."""

    transport: TransportName = "websocket"
    max_batch = 1000

    def __init__(self, url: str, ws: aiohttp.ClientWebSocketResponse) -> None:
        super().__init__(url)
        self._ws = ws

    async def receive(self) -> Frame | None:
        while True:
            try:
                message = await self._ws.receive()
            except (aiohttp.ClientError, OSError) as exc:
                self.note_close(CloseCode.ABNORMAL_CLOSURE, f"connection error: {exc!r}")
                return None
            if message.type is aiohttp.WSMsgType.TEXT:
                try:
                    decoded = _decode(message.data)
                except msgspec.DecodeError:
                    continue  # not ours to interpret; the protocol only sends JSON objects
                if isinstance(decoded, dict):
                    return Frame(message=decoded)
                continue
            if message.type is aiohttp.WSMsgType.BINARY:
                continue
            if message.type in (aiohttp.WSMsgType.PING, aiohttp.WSMsgType.PONG):
                continue
            # CLOSE, CLOSING, CLOSED or ERROR: the connection is over.
            code = self._ws.close_code
            if message.type is aiohttp.WSMsgType.ERROR:
                self.note_close(
                    code or CloseCode.ABNORMAL_CLOSURE, f"connection error: {message.data!r}"
                )
            elif message.type is aiohttp.WSMsgType.CLOSE:
                reason = message.extra if isinstance(message.extra, str) else ""
                self.note_close(code or message.data, reason)
            else:
                self.note_close(code or CloseCode.ABNORMAL_CLOSURE, "connection closed")
            return None

    async def send(self, messages: list[dict[str, Any]]) -> list[dict[str, Any]] | None:
        for message in messages:
            await self._ws.send_str(_encode(message).decode())
        return None

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self._ws.close()
        self.note_close(self._ws.close_code or CloseCode.NORMAL, "closed by the client")


class SseConnection(Connection):
    """An event stream down, commands up by POST."""

    transport: TransportName = "sse"
    max_batch = MAX_COMMANDS_PER_POST

    def __init__(
        self,
        url: str,
        response: aiohttp.ClientResponse,
        dialer: Dialer,
        token: str,
        push_ref: str,
    ) -> None:
        super().__init__(url)
        self._response = response
        self._dialer = dialer
        self._parser = SseParser()
        self._pending: deque[Frame] = deque()
        self._idle_timeout: float | None = None
        self.token = token
        self.push_ref = push_ref
        self.post_timeout = 10.0
        self._closed = False

    @property
    def retry_ms(self) -> int | None:
        """The server's suggested reconnection delay (`retry:`), if it sent one."""
        return self._parser.retry_ms

    @property
    def last_event_id(self) -> str:
        """The last `id:` seen on the stream."""
        return self._parser.last_id

    def set_idle_timeout(self, seconds: float | None) -> None:
        self._idle_timeout = seconds

    async def receive(self) -> Frame | None:
        while not self._pending:
            if self._closed:
                return None
            try:
                async with asyncio.timeout(self._idle_timeout):
                    chunk = await self._response.content.readany()
            except TimeoutError:
                self.note_close(
                    CloseCode.ABNORMAL_CLOSURE, "no data nor keep-alive within the idle timeout"
                )
                await self.close()
                return None
            except (aiohttp.ClientError, OSError) as exc:
                self.note_close(CloseCode.ABNORMAL_CLOSURE, f"stream error: {exc!r}")
                return None
            if not chunk:
                self.note_close(CloseCode.ABNORMAL_CLOSURE, "stream ended")
                return None
            for event in self._parser.feed(chunk):
                if event.data is None:
                    if event.has_id:
                        self._pending.append(Frame(mark=event.id))
                    continue
                try:
                    decoded = _decode(event.data)
                except msgspec.DecodeError:
                    continue
                if not isinstance(decoded, dict):
                    continue
                if decoded.get("type") == "disconnect":
                    data = decoded.get("data")
                    if isinstance(data, dict):
                        code = data.get("code")
                        self.note_close(
                            code if isinstance(code, int) else None, str(data.get("reason", ""))
                        )
                self._pending.append(Frame(message=decoded))
        return self._pending.popleft()

    async def send(self, messages: list[dict[str, Any]]) -> list[dict[str, Any]] | None:
        return await self._dialer.post_commands(
            self.url, self.push_ref, self.token, messages, self.post_timeout
        )

    async def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._response.close()
        self.note_close(CloseCode.NORMAL, "closed by the client")
