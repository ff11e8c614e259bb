"""The execution relay: how an execution event is published (docs/protocol.md, "Executions").

One event, one publication, to `execution:<id>`, recorded in the execution's state in the same
atomic engine step. The tab that started the run and the watchers of its workflow follow that
stream: when it starts, an `executionStream` notice goes to `push:<pushRef>` and
`workflow:<id>`, and the nodes subscribe whoever receives it (`execution/feature.py`). Node
outputs over `inline_bytes` are stored once and announced by an `executionOutput`; each
connection then pulls the output in chunks (`execution/transfer.py`).

Used by the node's `Executions` feature (in process and the HTTP API) and by
`livepush.publisher` (through Redis): the same rules wherever an event comes from.
"""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass
from typing import Any, NamedTuple

import msgspec

from livepush.engines.base import SEQUENCE_SLOT, ExecutionStore
from livepush.execution import state as execution_state
from livepush.execution.sink import EventRequest
from livepush.protocol import execution as events
from livepush.protocol.channels import parse_channel, push_channel, validate_push_ref
from livepush.protocol.envelope import Publication, compact_raw_object, encode_data
from livepush.protocol.errors import ErrorCode, ProtocolError

#: Server types of the execution path (reserved: publishers cannot send them).
STREAM_NOTICE = "executionStream"
OUTPUT_MARKER = "executionOutput"
OUTPUT_CHUNK = "executionOutputChunk"


@dataclass(frozen=True, slots=True)
class ExecutionSettings:
    """Limits and lifetimes of the execution path."""

    #: An execution's state (and its outputs) lives this long after its last event.
    retention: float = 3600.0
    #: `nodeExecuteAfterData` up to this size is sent inline.
    inline_bytes: int = 1024 * 1024
    #: Above `inline_bytes` and up to this size an output is sent in chunks; above, by
    #: reference only.
    push_limit: int = 64 * 1024 * 1024
    #: Largest output accepted at all.
    max_bytes: int = 256 * 1024 * 1024
    #: Size of one chunk.
    chunk_bytes: int = 256 * 1024
    #: Outputs up to this size are inline in snapshots (bigger ones are references).
    snapshot_inline_bytes: int = 16 * 1024
    #: Largest data of an event other than `nodeExecuteAfterData`.
    max_event_bytes: int = 16 * 1024 * 1024


class Event(NamedTuple):
    """A validated execution event, ready to publish."""

    type: str
    data: bytes
    payload: Any
    execution_id: str
    sequence: bool
    push_ref: str | None
    workflow_id: str | None


class _SequenceProbe(msgspec.Struct):
    sequenceNumber: int | msgspec.UnsetType = msgspec.UNSET


_probe = msgspec.json.Decoder(_SequenceProbe)


def output_url(execution_id: str, node_name: str, execution_index: int) -> str:
    """Where a stored output is fetched (relative to the server)."""
    node = urllib.parse.quote(node_name, safe="")
    return f"/api/v1/executions/{execution_id}/nodes/{node}/output?executionIndex={execution_index}"


def prepare(
    event_type: str,
    data: dict[str, Any] | bytes,
    settings: ExecutionSettings,
    *,
    push_ref: str | None = None,
    workflow_id: str | None = None,
    channel: str | None = None,
) -> Event:
    """Validate an execution event (before anything is published: a bad batch publishes
    nothing). Raises `ProtocolError` with `invalid_message` and the path of a wrong field.
    `channel`: where the publisher addressed it, which must be the execution's."""
    if event_type not in events.EXECUTION_EVENTS:
        raise ProtocolError(
            ErrorCode.INVALID_MESSAGE,
            f"{event_type!r} is not an execution event: one of "
            + ", ".join(sorted(events.EXECUTION_EVENTS)),
        )
    encoded = compact_raw_object(data) if isinstance(data, bytes) else encode_data(data)
    limit = settings.max_bytes if event_type == "nodeExecuteAfterData" else settings.max_event_bytes
    if len(encoded) > limit:
        raise ProtocolError(
            ErrorCode.PAYLOAD_TOO_LARGE,
            f"{event_type} data is {len(encoded)} bytes; the limit is {limit}",
        )
    sequence = False
    if event_type in events.SEQUENCED_EVENTS:
        try:
            probe = _probe.decode(encoded)
        except msgspec.ValidationError as exc:
            raise ProtocolError(
                ErrorCode.INVALID_MESSAGE, f"{event_type} does not have n8n's shape: {exc}"
            ) from exc
        if probe.sequenceNumber is msgspec.UNSET:
            # livepush numbers it: the event's offset in execution:<id> (set when placed)
            sequence = True
            rest = encoded[1:].lstrip()
            encoded = SEQUENCE_SLOT + (b"}" if rest == b"}" else b"," + rest)
    payload = events.validate_event(event_type, encoded)
    if event_type in events.SUBWORKFLOW_EVENTS:
        execution_id = payload.parentExecutionId  # type: ignore[union-attr]
    else:
        execution_id = payload.executionId  # type: ignore[union-attr]
    parse_channel(f"execution:{execution_id}")
    if channel is not None and channel != f"execution:{execution_id}":
        raise ProtocolError(
            ErrorCode.INVALID_MESSAGE,
            f"{event_type} of execution {execution_id!r} published to {channel!r}: execution "
            f"events go to their execution's channel, execution:{execution_id}",
        )
    if push_ref is not None:
        validate_push_ref(push_ref)
    if workflow_id is None and event_type in ("executionStarted", "executionFinished"):
        workflow_id = payload.workflowId  # type: ignore[union-attr]
    if workflow_id is not None:
        parse_channel(f"workflow:{workflow_id}")
    return Event(event_type, encoded, payload, execution_id, sequence, push_ref, workflow_id)


class ExecutionRelay:
    """Publishes execution events through an engine's execution store."""

    def __init__(self, store: ExecutionStore, settings: ExecutionSettings | None = None) -> None:
        self.store = store
        self.settings = settings or ExecutionSettings()

    def prepare(self, request: EventRequest) -> Event:
        """Validate an event with this relay's settings (see `prepare`)."""
        return prepare(
            request.type,
            request.data,
            self.settings,
            push_ref=request.push_ref,
            workflow_id=request.workflow_id,
        )

    async def publish_prepared(self, event: Event) -> Publication:
        """Publish an event checked by `prepare`."""
        settings = self.settings
        channel = f"execution:{event.execution_id}"
        message_type, data, output = event.type, event.data, None
        if message_type == "nodeExecuteAfterData":
            payload = event.payload
            size = len(data)
            index = payload.data.executionIndex
            url = output_url(event.execution_id, payload.nodeName, index)
            if size <= settings.snapshot_inline_bytes:
                output = {"nodeName": payload.nodeName, "bytes": size, "inline": msgspec.Raw(data)}
            else:
                await self.store.put_output(
                    event.execution_id, str(index), data, settings.retention
                )
                output = {"nodeName": payload.nodeName, "bytes": size, "url": url}
            if size > settings.inline_bytes:
                message_type = OUTPUT_MARKER
                data = msgspec.json.encode(
                    {
                        "executionId": event.execution_id,
                        "nodeName": payload.nodeName,
                        "executionIndex": index,
                        "itemCountByConnectionType": payload.itemCountByConnectionType,
                        "bytes": size,
                        "delivery": "chunks" if size <= settings.push_limit else "reference",
                        "url": url,
                        "outputId": f"{event.execution_id}/{index}",
                    }
                )
        fields, delete = execution_state.fields_for(
            event.type,
            event.payload,
            event.data,
            workflow_id=event.workflow_id,
            push_ref=event.push_ref,
            output=output,
        )
        placed = await self.store.publish(
            Publication(channel, message_type, data),
            event.execution_id,
            fields,
            delete,
            sequence=event.sequence,
            retention=settings.retention,
        )
        if placed.offset == 1 or event.type == "executionStarted":
            await self._announce(event, placed)
        return placed

    async def _announce(self, event: Event, placed: Publication) -> None:
        """Tell the starting tab and the workflow's watchers that this stream exists."""
        notice: dict[str, Any] = {
            "executionId": event.execution_id,
            "channel": placed.channel,
            "epoch": placed.epoch,
        }
        if event.workflow_id is not None:
            notice["workflowId"] = event.workflow_id
        data = msgspec.json.encode(notice)
        targets = []
        if event.push_ref is not None:
            targets.append(push_channel(event.push_ref))
        if event.workflow_id is not None:
            targets.append(f"workflow:{event.workflow_id}")
        for target in targets:
            await self.store.publish(
                Publication(target, STREAM_NOTICE, data),
                event.execution_id,
                (),
                retention=self.settings.retention,
            )

    async def snapshot(self, execution_id: str) -> tuple[dict[str, Any], Any] | None:
        """(snapshot, its stream position), or None for an unknown or expired execution."""
        recorded = await self.store.state(execution_id)
        if recorded is None:
            return None
        return execution_state.snapshot(execution_id, recorded), recorded.position

    async def owners(self, execution_id: str) -> tuple[str | None, str | None]:
        """(workflow id, pushRef of the tab that started it) of an execution, as recorded
        (for authorization)."""
        found = await self.store.fields(execution_id, ("W", "P"))
        workflow, push_ref = found.get("W"), found.get("P")
        return (
            workflow.decode() if workflow else None,
            push_ref.decode() if push_ref else None,
        )
