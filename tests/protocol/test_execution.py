"""n8n's execution events are checked against their n8n shapes when published."""

from __future__ import annotations

import json
from typing import Any

import pytest

from livepush.protocol.envelope import new_publication
from livepush.protocol.errors import ErrorCode, ProtocolError
from livepush.protocol.execution import EXECUTION_EVENTS, validate_event

_STARTED: dict[str, Any] = {"startTime": 1764064800000, "executionIndex": 0, "source": [None]}
_FINISHED: dict[str, Any] = {
    "startTime": 1764064800000,
    "executionIndex": 1,
    "source": [{"previousNode": "Trigger", "previousNodeOutput": 0}],
    "executionTime": 12,
    "executionStatus": "success",
}

#: One valid `data` per execution event (also recorded and type-checked against the npm
#: package in tests/interop/test_n8n_types.py).
SAMPLES: dict[str, dict[str, Any]] = {
    "executionStarted": {
        "executionId": "1",
        "mode": "manual",
        "startedAt": "2026-11-25T10:00:00.000Z",
        "workflowId": "42",
        "workflowName": "My workflow",
        "flattedRunData": "[{}]",
    },
    "nodeExecuteBefore": {
        "executionId": "1",
        "nodeName": "HTTP Request",
        "sequenceNumber": 0,
        "data": _STARTED,
    },
    "nodeExecuteAfter": {
        "executionId": "1",
        "nodeName": "HTTP Request",
        "sequenceNumber": 1,
        "data": _FINISHED,
        "itemCountByConnectionType": {"main": [2]},
    },
    "nodeExecuteAfterData": {
        "executionId": "1",
        "nodeName": "HTTP Request",
        "data": {**_FINISHED, "data": {"main": [[{"json": {"id": 1}}, {"json": {"id": 2}}]]}},
        "itemCountByConnectionType": {"main": [2]},
    },
    "executionWaiting": {"executionId": "1"},
    "executionFinished": {
        "executionId": "1",
        "workflowId": "42",
        "status": "success",
        "source": "user",
    },
    "executionRecovered": {"executionId": "1"},
    "subworkflowExecutionStarted": {
        "parentExecutionId": "1",
        "parentNodeName": "Execute Workflow",
        "executionId": "2",
        "totalNodes": 3,
    },
    "subworkflowNodeProgress": {
        "parentExecutionId": "1",
        "parentNodeName": "Execute Workflow",
        "executionId": "2",
        "currentNodeName": "Set",
        "currentNodeIndex": 1,
        "totalNodes": 3,
        "phase": "running",
    },
    "subworkflowExecutionFinished": {
        "parentExecutionId": "1",
        "parentNodeName": "Execute Workflow",
        "executionId": "2",
        "status": "success",
    },
}


def test_every_event_has_a_sample() -> None:
    assert set(SAMPLES) == set(EXECUTION_EVENTS)


@pytest.mark.parametrize("event", sorted(SAMPLES))
def test_valid_events_are_accepted(event: str) -> None:
    validate_event(event, json.dumps(SAMPLES[event]).encode())
    new_publication("execution:1", event, SAMPLES[event], max_bytes=1 << 20)


@pytest.mark.parametrize(
    ("event", "change", "needle"),
    [
        ("executionFinished", {"status": "done"}, "$.status"),
        ("executionFinished", {"source": None}, "$.source"),
        ("executionStarted", {"mode": "sometimes"}, "$.mode"),
        ("executionStarted", {"flattedRunData": None}, "$.flattedRunData"),
        ("nodeExecuteBefore", {"sequenceNumber": "1"}, "$.sequenceNumber"),
        ("nodeExecuteBefore", {"data": {"startTime": 1}}, "$.data"),
        ("nodeExecuteAfter", {"itemCountByConnectionType": {"main": ["2"]}}, "$.item"),
        ("nodeExecuteAfterData", {"data": {**_FINISHED, "executionStatus": "ok"}}, "$.data"),
        ("executionRecovered", {"executionId": 1}, "$.executionId"),
    ],
)
def test_invalid_events_are_refused_with_the_path(
    event: str, change: dict[str, Any], needle: str
) -> None:
    data = {**SAMPLES[event], **change}
    with pytest.raises(ProtocolError) as raised:
        new_publication("execution:1", event, data, max_bytes=1 << 20)
    assert raised.value.code is ErrorCode.INVALID_MESSAGE
    assert event in raised.value.message and needle in raised.value.message


def test_missing_required_field_is_refused() -> None:
    data = dict(SAMPLES["executionFinished"])
    del data["workflowId"]
    with pytest.raises(ProtocolError, match="workflowId"):
        validate_event("executionFinished", json.dumps(data).encode())


def test_unknown_fields_and_other_types_pass() -> None:
    validate_event("executionRecovered", b'{"executionId":"1","newInSomeN8n":true}')
    validate_event("workflowUpdated", b'{"anything": [1, 2]}')
