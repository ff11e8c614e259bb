"""Where execution events go: the one interface every publisher of execution events offers.

    await sink.publish_execution("nodeExecuteBefore", data, push_ref=tab, workflow_id="42")

Three sinks implement it: a node's `Executions` feature (in process), `livepush.publisher.
Publisher` (through Redis, from workers) and `livepush.publisher.HttpPublisher` (a server's
HTTP API); `livepush.execution.Execution` builds n8n's events on top of any of them. Each
implements `submit`; `publish_execution` is written once, here.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, NamedTuple


class EventRequest(NamedTuple):
    """One execution event as a publisher hands it over (docs/protocol.md, "Executions")."""

    #: One of n8n's execution event types (`executionStarted`, `nodeExecuteBefore`...).
    type: str
    #: Its data: a dict, or the JSON bytes of an object.
    data: dict[str, Any] | bytes
    #: The tab that started the run: it follows the execution.
    push_ref: str | None = None
    #: The execution's workflow: its watchers follow the execution.
    workflow_id: str | None = None


class ExecutionSink(ABC):
    """Publishes execution events (to `execution:<id>`, recorded in the execution's state,
    followed by the tab `push_ref` and the watchers of `workflow_id`)."""

    async def publish_execution(
        self,
        event_type: str,
        data: dict[str, Any] | bytes,
        *,
        push_ref: str | None = None,
        workflow_id: str | None = None,
    ) -> Any:
        """Publish one execution event; returns where it landed (a `Publication`, or the HTTP
        API's position). Invalid input raises `ProtocolError` with the HTTP API's codes."""
        return await self.submit(EventRequest(event_type, data, push_ref, workflow_id))

    @abstractmethod
    async def submit(self, request: EventRequest) -> Any:
        """Publish one execution event (see `publish_execution`)."""
