"""Publish to livepush channels through Redis, without running a server.

For backends and workers that produce events but hold no client connection: n8n's queue mode,
where workers run executions while the editor is connected to a main instance. Publications
get their channel offset, go into the channel's history and reach every node's subscribers
exactly as if a node had published them (the same atomic Redis script; the Redis-level format
is in docs/protocol.md, for publishers in other languages).

    async with Publisher("redis://127.0.0.1:6379/0") as publisher:
        await publisher.publish("workflow:42", "workflowUpdated", {"id": "42"})
        await publisher.to_push_ref(push_ref, "executionStarted", {...})
        await publisher.to_users(["u1", "u2"], "workflowActivated", {...})

Use the same `prefix`, `history_size` and `history_ttl` as the servers (the defaults match).
Errors: invalid input raises `ProtocolError` (with the same codes as the HTTP API); Redis being
unreachable raises `EngineUnavailable` (nothing was published; retry).

Execution events take the execution path (docs/protocol.md, "Executions"): use
`publish_execution`, or the helpers of `livepush.execution.Execution` with a publisher as the
sink. `HttpPublisher` does the same through a server's HTTP API, for processes that cannot
reach Redis.
"""

from __future__ import annotations

from collections.abc import Iterable
from types import TracebackType
from typing import Any, Self

import aiohttp
import msgspec

from livepush.engines.redis import RedisExecutions, RedisStreams
from livepush.execution.relay import ExecutionRelay, ExecutionSettings
from livepush.execution.sink import EventRequest, ExecutionSink
from livepush.protocol.channels import SYSTEM, push_channel, user_channel
from livepush.protocol.envelope import Priority, Publication, new_publication
from livepush.protocol.errors import ErrorCode, ProtocolError

__all__ = ["HttpPublisher", "PublishFailed", "Publisher"]


class _Lifecycle:
    """`async with` for a publisher: `start` on entry, `close` on exit."""

    async def start(self) -> None:
        """Connect."""

    async def close(self) -> None:
        """Disconnect."""

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()


class Publisher(_Lifecycle, ExecutionSink):
    """Publishes through Redis to the channels of a livepush cluster."""

    def __init__(
        self,
        redis_url: str = "redis://127.0.0.1:6379/0",
        *,
        prefix: str = "livepush",
        cluster: bool = False,
        history_size: int = 1000,
        history_ttl: float = 300.0,
        max_publish_bytes: int = 16 * 1024 * 1024,
        execution: ExecutionSettings | None = None,
    ) -> None:
        self._streams = RedisStreams(
            redis_url,
            history_size=history_size,
            history_ttl=history_ttl,
            prefix=prefix,
            cluster=cluster,
        )
        self._max_bytes = max_publish_bytes
        self._started = False
        self._executions = ExecutionRelay(
            RedisExecutions(self._streams), execution or ExecutionSettings()
        )

    async def start(self) -> None:
        """Connect to Redis (raises `EngineUnavailable` if it cannot)."""
        await self._streams.start()
        self._started = True

    async def close(self) -> None:
        """Disconnect."""
        await self._streams.close()
        self._started = False

    async def publish(
        self,
        channel: str,
        message_type: str,
        data: dict[str, Any] | bytes,
        *,
        ephemeral: bool = False,
        key: str | None = None,
    ) -> Publication:
        """Publish one message to one channel; returns it with its offset and epoch (ephemeral
        messages have neither: they are relayed, not kept)."""
        if not self._started:
            await self.start()
        publication = new_publication(
            channel,
            message_type,
            data,
            priority=Priority.EPHEMERAL if ephemeral else Priority.RELIABLE,
            key=key,
            max_bytes=self._max_bytes,
        )
        return await self._streams.publish(publication)

    async def submit(self, request: EventRequest) -> Publication:
        """Publish one execution event (`publish_execution`: to `execution:<id>`, recorded in
        its state, followed by the tab and the workflow's watchers), with the servers'
        execution settings (the defaults match)."""
        event = self._executions.prepare(request)
        if not self._started:
            await self.start()
        return await self._executions.publish_prepared(event)

    async def to_push_ref(
        self, push_ref: str, message_type: str, data: dict[str, Any] | bytes
    ) -> Publication:
        """To one browser tab (n8n's `sendToOne`)."""
        return await self.publish(push_channel(push_ref), message_type, data)

    async def to_users(
        self, user_ids: Iterable[str], message_type: str, data: dict[str, Any] | bytes
    ) -> list[Publication]:
        """To every tab of each user (n8n's `sendToUsers`)."""
        return [await self.publish(user_channel(u), message_type, data) for u in user_ids]

    async def broadcast(self, message_type: str, data: dict[str, Any] | bytes) -> Publication:
        """To every connection of the cluster (n8n's `broadcast`)."""
        return await self.publish(SYSTEM, message_type, data)


class PublishFailed(ProtocolError):
    """The server refused a publish (its error code and message), or could not be reached
    (`engine_unavailable` with the connection error)."""

    def __init__(self, code: ErrorCode, message: str, status: int) -> None:
        super().__init__(code, message)
        self.status = status


class HttpPublisher(_Lifecycle, ExecutionSink):
    """Publishes through a server's HTTP API (`/api/v1/publish`, `/api/v1/executions/events`)
    with the API key.

        async with HttpPublisher("http://127.0.0.1:8080", api_key) as publisher:
            await publisher.publish("workflow:42", "workflowUpdated", {"workflowId": "42"})
            execution = Execution(publisher, "1", "42", push_ref="abc")
    """

    def __init__(self, url: str, api_key: str, *, timeout: float = 60.0) -> None:
        self.url = url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {api_key}"}
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._http: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        """Open the HTTP session."""
        if self._http is None:
            self._http = aiohttp.ClientSession(headers=self._headers, timeout=self._timeout)

    async def close(self) -> None:
        """Close the HTTP session."""
        if self._http is not None:
            await self._http.close()
            self._http = None

    async def _post(self, path: str, body: dict[str, Any]) -> Any:
        await self.start()
        assert self._http is not None
        try:
            async with self._http.post(
                self.url + path,
                data=msgspec.json.encode(body),
                headers={"Content-Type": "application/json"},
            ) as response:
                raw = await response.read()
                status = response.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise PublishFailed(
                ErrorCode.ENGINE_UNAVAILABLE, f"{self.url} unreachable: {exc!r}", 0
            ) from exc
        try:
            reply = msgspec.json.decode(raw)
        except msgspec.DecodeError:
            reply = None
        if status != 200:
            error = reply.get("error", {}) if isinstance(reply, dict) else {}
            try:
                code = ErrorCode(str(error.get("code")))
            except ValueError:
                code = ErrorCode.INTERNAL_ERROR
            raise PublishFailed(code, str(error.get("message", raw[:200])), status)
        return reply

    async def publish(
        self, channel: str, message_type: str, data: dict[str, Any], **extra: Any
    ) -> dict[str, Any]:
        """`POST /api/v1/publish` to one channel; returns `{"channel", "offset", "epoch"}`."""
        body = {"type": message_type, "data": data, "channel": channel} | extra
        reply = await self._post("/api/v1/publish", body)
        return dict(reply["publications"][0])

    async def submit(self, request: EventRequest) -> dict[str, Any]:
        """`POST /api/v1/executions/events` with one event (`publish_execution`); returns its
        position."""
        data = request.data
        body: dict[str, Any] = {
            "type": request.type,
            "data": msgspec.Raw(data) if isinstance(data, bytes) else data,
        }
        if request.push_ref is not None:
            body["pushRef"] = request.push_ref
        if request.workflow_id is not None:
            body["workflowId"] = request.workflow_id
        reply = await self._post("/api/v1/executions/events", body)
        return dict(reply["publications"][0])
