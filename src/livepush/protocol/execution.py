"""n8n's execution push events, typed: the payload shapes of `@n8n/api-types` (push/execution,
version 1.41.0) and the `n8n-workflow` types they use, plus the sub-workflow progress events of
newer n8n (`subworkflowExecutionStarted`, `subworkflowNodeProgress`,
`subworkflowExecutionFinished`, not in 1.41.0), checked when such an event is published
so that what reaches an n8n editor is what it expects (tests/interop type-checks a recorded
stream against the npm package with the TypeScript compiler).

Only the fields n8n defines are checked; unknown fields are accepted (newer n8n versions add
some, and clients ignore what they do not know). Optional fields may be absent but not
`null`, as in TypeScript. Large nested values (a node's output items, error objects) are not
decoded: they stay raw JSON, so validating a 50 MB output costs one scan, not a tree.
"""

from __future__ import annotations

from typing import Final, Literal

import msgspec
from msgspec import UNSET, Raw, UnsetType

from livepush.protocol.decoding import JsonDecoder
from livepush.protocol.errors import ErrorCode, ProtocolError

#: `n8n-workflow` ExecutionStatus.
ExecutionStatus = Literal[
    "canceled", "crashed", "error", "new", "running", "success", "unknown", "waiting"
]
#: `n8n-workflow` WorkflowExecuteMode.
WorkflowExecuteMode = Literal[
    "cli",
    "error",
    "integrated",
    "internal",
    "manual",
    "retry",
    "trigger",
    "webhook",
    "evaluation",
    "chat",
    "agent",
]
WorkflowExecutionSource = Literal["user", "instance_ai"]


class _Payload(msgspec.Struct, kw_only=True):
    pass


class SourceData(_Payload, kw_only=True):
    """`ISourceData`: which node and output fed this node."""

    previousNode: str
    previousNodeOutput: int | UnsetType = UNSET
    previousNodeRun: int | UnsetType = UNSET


class TaskStartedData(_Payload, kw_only=True):
    """`ITaskStartedData`."""

    startTime: float
    executionIndex: int
    source: list[SourceData | None]
    hints: list[Raw] | UnsetType = UNSET


class TaskDataWithoutData(TaskStartedData, kw_only=True):
    """`Omit<ITaskData, 'data'>`: a finished node run, without its output items."""

    executionTime: float
    executionStatus: ExecutionStatus | UnsetType = UNSET
    inputOverride: Raw | UnsetType = UNSET
    error: Raw | UnsetType = UNSET
    redactedError: Raw | UnsetType = UNSET
    metadata: Raw | UnsetType = UNSET
    usedDynamicCredentials: bool | UnsetType = UNSET
    attemptedDynamicCredentials: bool | UnsetType = UNSET


class TaskData(TaskDataWithoutData, kw_only=True):
    """`ITaskData`: a finished node run with its output items (kept raw)."""

    data: Raw | UnsetType = UNSET


class ExecutionStarted(_Payload, kw_only=True):
    executionId: str
    mode: WorkflowExecuteMode
    source: WorkflowExecutionSource | UnsetType = UNSET
    #: A `Date` in n8n's types: an ISO 8601 string on the wire.
    startedAt: str
    workflowId: str
    workflowName: str | UnsetType = UNSET
    retryOf: str | UnsetType = UNSET
    flattedRunData: str


class ExecutionWaiting(_Payload, kw_only=True):
    executionId: str
    source: WorkflowExecutionSource | UnsetType = UNSET


class ExecutionFinished(_Payload, kw_only=True):
    executionId: str
    workflowId: str
    status: ExecutionStatus
    source: WorkflowExecutionSource | UnsetType = UNSET


class ExecutionRecovered(_Payload, kw_only=True):
    executionId: str


class NodeExecuteBefore(_Payload, kw_only=True):
    executionId: str
    nodeName: str
    sequenceNumber: int
    data: TaskStartedData


class NodeExecuteAfter(_Payload, kw_only=True):
    executionId: str
    nodeName: str
    sequenceNumber: int
    data: TaskDataWithoutData
    itemCountByConnectionType: dict[str, list[int]]


class NodeExecuteAfterData(_Payload, kw_only=True):
    executionId: str
    nodeName: str
    data: TaskData
    itemCountByConnectionType: dict[str, list[int]]


class SubworkflowExecutionStarted(_Payload, kw_only=True):
    parentExecutionId: str
    parentNodeName: str
    executionId: str
    totalNodes: int


class SubworkflowNodeProgress(_Payload, kw_only=True):
    parentExecutionId: str
    parentNodeName: str
    executionId: str
    currentNodeName: str
    currentNodeIndex: int
    totalNodes: int
    phase: Literal["running", "success", "error"]


class SubworkflowExecutionFinished(_Payload, kw_only=True):
    parentExecutionId: str
    parentNodeName: str
    executionId: str
    status: ExecutionStatus


#: Event type -> its `data` shape.
EXECUTION_EVENTS: Final[dict[str, type[_Payload]]] = {
    "executionStarted": ExecutionStarted,
    "executionWaiting": ExecutionWaiting,
    "executionFinished": ExecutionFinished,
    "executionRecovered": ExecutionRecovered,
    "nodeExecuteBefore": NodeExecuteBefore,
    "nodeExecuteAfter": NodeExecuteAfter,
    "nodeExecuteAfterData": NodeExecuteAfterData,
    "subworkflowExecutionStarted": SubworkflowExecutionStarted,
    "subworkflowNodeProgress": SubworkflowNodeProgress,
    "subworkflowExecutionFinished": SubworkflowExecutionFinished,
}

#: Events about a child execution that belong to its parent's stream.
SUBWORKFLOW_EVENTS: Final = frozenset(
    {"subworkflowExecutionStarted", "subworkflowNodeProgress", "subworkflowExecutionFinished"}
)
#: Events that carry n8n's per-execution `sequenceNumber`.
SEQUENCED_EVENTS: Final = frozenset({"nodeExecuteBefore", "nodeExecuteAfter"})

_DECODERS: Final[dict[str, JsonDecoder[_Payload]]] = {
    name: JsonDecoder(shape, max_depth=None) for name, shape in EXECUTION_EVENTS.items()
}


def validate_event(message_type: str, data: bytes) -> _Payload | None:
    """Raise `invalid_message` when an execution event's `data` does not have n8n's shape
    (types other than the execution events pass unchecked, and give None)."""
    decoder = _DECODERS.get(message_type)
    if decoder is None:
        return None
    try:
        return decoder.decode(data)
    except msgspec.ValidationError as exc:
        raise ProtocolError(
            ErrorCode.INVALID_MESSAGE, f"{message_type} does not have n8n's shape: {exc}"
        ) from exc
    except msgspec.DecodeError as exc:
        raise ProtocolError(ErrorCode.INVALID_JSON, f"{message_type}: {exc}") from exc
