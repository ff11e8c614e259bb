"""Executions as the node sees it (`core/extensions.py`): who may see an execution, who follows
its stream, large outputs in chunks, snapshots, and the publishing path of execution events.

- Publishing: an execution event published to `execution:<id>` (the node's API, the publish
  API) takes the relay's path (`execution/relay.py`); this feature is also the in-process
  `ExecutionSink` (`await executions.publish_execution(...)`).
- Following: a session handed an execution's `executionStream` notice (in its tab's or its
  workflow's channel) is subscribed to the execution from offset 0 of the notice's epoch; the
  sessions told in one loop iteration follow as one batch (one engine subscription and one
  history read for all). The subscription ends with `unsubscribed` (`execution_finished`)
  once `executionFinished` reached it.
- Authorization of `execution:<id>`: the policy's `can_subscribe`, or, as a follower, a user
  who may see the execution's workflow or whose tab started it.
- `executionSnapshot`: the execution's state and a subscription from exactly there.

    executions = Executions(node, ExecutionSettings())
    node.add(executions)
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import msgspec

from livepush.auth.tokens import Identity
from livepush.core.extensions import Access, Feature, Prepared, Reply
from livepush.core.node import Node
from livepush.core.session import Session
from livepush.core.subscriptions import followed
from livepush.execution.metrics import ExecutionMetrics
from livepush.execution.relay import (
    OUTPUT_MARKER,
    STREAM_NOTICE,
    Event,
    ExecutionRelay,
    ExecutionSettings,
    prepare,
)
from livepush.execution.sink import EventRequest, ExecutionSink
from livepush.execution.transfer import OutputTransfers
from livepush.protocol.channels import parse_channel
from livepush.protocol.commands import ExecutionSnapshot
from livepush.protocol.envelope import Priority, Publication, StreamPosition, control_message
from livepush.protocol.errors import ErrorCode, ProtocolError
from livepush.protocol.execution import EXECUTION_EVENTS


class Executions(Feature, ExecutionSink):
    """The execution path of a node."""

    name = "executions"

    def __init__(self, node: Node, settings: ExecutionSettings | None = None) -> None:
        super().__init__()
        self.node = node
        self.settings = settings or ExecutionSettings()
        self.metrics = ExecutionMetrics(node.metrics.registry)
        self.store = node.engine.executions
        self.relay = ExecutionRelay(self.store, self.settings)
        self.transfers = OutputTransfers(
            self.store, chunk_bytes=self.settings.chunk_bytes, metrics=self.metrics
        )
        self._follow_batches: dict[tuple[str, str], list[Session]] = {}
        self.commands = {"executionSnapshot": self._snapshot_command}
        self.authorizers = {"execution": self._authorize_channel}
        self.publishers = {"execution": self._prepare_publication}
        self.observers = {
            STREAM_NOTICE: self._on_stream_notice,
            OUTPUT_MARKER: self.transfers.start,
            "executionFinished": self._on_finished,
        }

    async def close(self) -> None:
        """Stop every output transfer."""
        await self.transfers.close()

    # -- publishing --------------------------------------------------------------------------

    async def submit(self, request: EventRequest) -> Publication:
        """Validate and publish one execution event (the in-process `ExecutionSink`)."""
        return await self.publish_event(self.relay.prepare(request))

    async def publish_event(self, event: Event) -> Publication:
        """Publish an event checked by `prepare` (the HTTP API checks a whole batch first)."""
        return await self.node.publish_prepared(_PreparedEvent(event, self.relay))

    def _prepare_publication(
        self,
        channel: str,
        message_type: str,
        data: dict[str, Any] | bytes,
        priority: Priority,
        key: str | None,
    ) -> Prepared | None:
        """An execution event published to `execution:<id>` takes the execution path."""
        if message_type not in EXECUTION_EVENTS:
            return None
        return _PreparedEvent(
            prepare(message_type, data, self.settings, channel=channel), self.relay
        )

    # -- authorization -----------------------------------------------------------------------

    async def authorize(
        self,
        identity: Identity,
        execution_id: str,
        *,
        watching: Iterable[str] = (),
        push_ref: str | None = None,
    ) -> Access:
        """Whether a user may see an execution: `SUBSCRIBE` if they may subscribe to
        `execution:<id>`, `FOLLOW` if they may follow it (they may see, or already watch, its
        workflow, or their tab `push_ref` started it). Raises `forbidden` otherwise."""
        parse_channel(f"execution:{execution_id}")
        policy = self.node.policy
        if await policy.can_subscribe(identity, "execution", execution_id):
            return Access.SUBSCRIBE
        workflow, starter = await self.relay.owners(execution_id)
        if push_ref is not None and push_ref == starter:
            return Access.FOLLOW
        if workflow is not None and (
            f"workflow:{workflow}" in watching
            or await policy.can_subscribe(identity, "workflow", workflow)
        ):
            return Access.FOLLOW
        raise ProtocolError(ErrorCode.FORBIDDEN, f"not allowed to see execution {execution_id!r}")

    async def _authorize_channel(self, session: Session, execution_id: str) -> Access:
        return await self.authorize(
            session.identity, execution_id, watching=session.channels, push_ref=session.push_ref
        )

    # -- following ---------------------------------------------------------------------------

    def _on_stream_notice(self, session: Session, publication: Publication) -> None:
        notice = msgspec.json.decode(publication.data)
        channel, epoch = notice.get("channel"), notice.get("epoch")
        if isinstance(channel, str) and isinstance(epoch, str):
            # every session told in this loop iteration follows in one batch
            batch = self._follow_batches.get((channel, epoch))
            if batch is None:
                batch = self._follow_batches[(channel, epoch)] = []
                self.node.spawn(self._follow(channel, epoch))
            batch.append(session)

    async def _follow(self, channel: str, epoch: str) -> None:
        """Subscribe the sessions told of an execution's stream to it, from its start (if
        the engine keeps failing, they are told and can still catch up with
        `executionSnapshot`)."""
        batch = self._follow_batches.pop((channel, epoch), [])
        followers = await self.node.subscriptions.follow(batch, channel, StreamPosition(epoch, 0))
        if followers:
            self.metrics.follows.inc(followers)

    def _on_finished(self, session: Session, publication: Publication) -> None:
        if followed(session, publication.channel):
            self.node.spawn(
                self.node.subscriptions.end_follow(
                    session,
                    publication.channel,
                    "execution_finished",
                    "the execution finished; its stream ended",
                )
            )

    # -- snapshots ---------------------------------------------------------------------------

    async def snapshot(self, execution_id: str) -> tuple[dict[str, Any], Any] | None:
        """(snapshot, its stream position), or None for an unknown or expired execution."""
        return await self.relay.snapshot(execution_id)

    async def _snapshot_command(
        self, session: Session, command: ExecutionSnapshot, reply: Reply
    ) -> None:
        """Reply with an execution's snapshot and subscribe the session to its stream from
        there (docs/protocol.md, "Catch-up")."""
        execution_id, request_id = command.executionId, command.id
        channel = f"execution:{execution_id}"
        await self._authorize_channel(session, execution_id)
        taken = await self.relay.snapshot(execution_id)
        if taken is None:
            raise ProtocolError(
                ErrorCode.EXECUTION_NOT_FOUND,
                f"no execution {execution_id!r} (unknown, or its retention expired)",
            )
        snapshot, position = taken
        if channel in session.channels:
            reply(_snapshot_reply(execution_id, channel, position, snapshot, True, request_id))
            return
        subscriptions = self.node.subscriptions
        joined = await subscriptions.join_checked(session, channel, position, authorized=True)
        if joined.recovered is False:
            # the stream moved on further than its history holds while we subscribed: the
            # state now is newer; what arrives up to its offset is in it
            taken = await self.relay.snapshot(execution_id)
            if taken is not None:
                snapshot, position = taken
        reply(_snapshot_reply(execution_id, channel, position, snapshot, False, request_id))
        subscriptions.complete(session, joined)


class _PreparedEvent:
    """An execution event checked by `prepare`, published by the relay (`Prepared`)."""

    __slots__ = ("event", "relay")

    def __init__(self, event: Event, relay: ExecutionRelay) -> None:
        self.event = event
        self.relay = relay

    @property
    def type(self) -> str:
        """The event type."""
        return self.event.type

    async def place(self) -> Publication:
        """Publish through the relay."""
        return await self.relay.publish_prepared(self.event)


def _snapshot_reply(
    execution_id: str,
    channel: str,
    position: StreamPosition,
    snapshot: dict[str, Any],
    already: bool,
    request_id: Any,
) -> bytes:
    data: dict[str, Any] = {
        "executionId": execution_id,
        "channel": channel,
        "epoch": position.epoch,
        "offset": position.offset,
        "snapshot": snapshot,
    }
    if already:
        data["alreadySubscribed"] = True
    return control_message("reply", data, request_id)
