"""An execution's state, as recorded with its stream: which fields each event sets, and the
snapshot built from them. Pure: no I/O.

Each event writes its own fields (no read-modify-write), so the engine can record them in the
same atomic step as the publication, and a snapshot is the fold of every event up to the
stream position stored with it:

| field | written by | value |
|---|---|---|
| `W` | any event that names the workflow | the workflow id |
| `P` | any event that names the tab that started the run | its pushRef |
| `x` | `executionStarted` | its data |
| `w` | `executionWaiting` (deleted by the next node start or a finish) | its data |
| `t` | `executionFinished` | its data |
| `T` | `executionFinished` | server time, epoch milliseconds |
| `r` | `executionRecovered` | its data |
| `b:<executionIndex>` | `nodeExecuteBefore` | its data |
| `a:<executionIndex>` | `nodeExecuteAfter` | its data |
| `d:<executionIndex>` | `nodeExecuteAfterData` | `{"nodeName", "bytes"}` + `"inline"` or `"url"` |
| `s:<child executionId>` | sub-workflow events | `{"type", "data"}` of the latest |
"""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any

import msgspec

from livepush.engines.base import ExecutionState
from livepush.protocol import execution as events

_decode = msgspec.json.decode
_encode = msgspec.json.encode

Fields = list[tuple[str, bytes]]


def fields_for(
    event_type: str,
    payload: Any,
    data: bytes,
    *,
    workflow_id: str | None = None,
    push_ref: str | None = None,
    output: dict[str, Any] | None = None,
) -> tuple[Fields, list[str]]:
    """The state fields an event sets, and the ones it deletes. `output` describes a
    `nodeExecuteAfterData`'s output as the snapshot shows it (inline or by reference)."""
    fields: Fields = []
    delete: list[str] = []
    if workflow_id:
        fields.append(("W", workflow_id.encode()))
    if push_ref:
        fields.append(("P", push_ref.encode()))
    if event_type == "executionStarted":
        fields.append(("x", data))
        delete.append("w")
    elif event_type == "executionWaiting":
        fields.append(("w", data))
    elif event_type == "executionFinished":
        fields += [("t", data), ("T", b"%d" % int(time.time() * 1000))]
        delete.append("w")
    elif event_type == "executionRecovered":
        fields.append(("r", data))
    elif event_type == "nodeExecuteBefore":
        fields.append((f"b:{payload.data.executionIndex}", data))
        delete.append("w")
    elif event_type == "nodeExecuteAfter":
        fields.append((f"a:{payload.data.executionIndex}", data))
    elif event_type == "nodeExecuteAfterData":
        if output is not None:
            fields.append((f"d:{payload.data.executionIndex}", _encode(output)))
    elif event_type in events.SUBWORKFLOW_EVENTS:
        fields.append(
            (f"s:{payload.executionId}", _encode({"type": event_type, "data": msgspec.Raw(data)}))
        )
    return fields, delete


def _millis(iso: object) -> float | None:
    if not isinstance(iso, str):
        return None
    try:
        return datetime.fromisoformat(iso).timestamp() * 1000
    except ValueError:
        return None


def snapshot(
    execution_id: str, state: ExecutionState, *, now: float | None = None
) -> dict[str, Any]:
    """The snapshot of an execution (docs/protocol.md, "Catch-up")."""
    fields = state.fields
    started: dict[str, Any] = _decode(fields["x"]) if "x" in fields else {}
    finished: dict[str, Any] | None = _decode(fields["t"]) if "t" in fields else None
    waiting = "w" in fields and finished is None
    runs: dict[int, dict[str, Any]] = {}
    for field, value in fields.items():
        kind, sep, suffix = field.partition(":")
        if not sep or kind not in ("b", "a", "d"):
            continue
        runs.setdefault(int(suffix), {})[kind] = _decode(value)
    nodes: dict[str, dict[str, Any]] = {}
    for index in sorted(runs):
        run = runs[index]
        first = run.get("b") or run.get("a") or run.get("d") or {}
        name = first.get("nodeName")
        if not isinstance(name, str):
            continue
        node = nodes.get(name)
        if node is None:
            node = nodes[name] = {"nodeName": name, "runs": 0}
        node["runs"] += 1
        # the node's entry describes its latest run
        for key in ("executionTime", "executionStatus", "error", "itemCountByConnectionType"):
            node.pop(key, None)
        node.pop("output", None)
        node["executionIndex"] = index
        before = run.get("b")
        after = run.get("a")
        task: dict[str, Any] = (after or before or {}).get("data") or {}
        if "startTime" in task:
            node["startTime"] = task["startTime"]
        if after is not None:
            for key in ("executionTime", "executionStatus", "error"):
                if key in task:
                    node[key] = task[key]
            node["itemCountByConnectionType"] = after.get("itemCountByConnectionType", {})
            status = task.get("executionStatus")
            if not isinstance(status, str):
                status = "error" if "error" in task else "success"
            node["status"] = status
        else:
            node["status"] = "waiting" if waiting else "running"
        for key in ("progress", "sequenceNumber"):
            source = after if after is not None else before
            if source is not None and key in source:
                node[key] = source[key]
        if "d" in run:
            output = run["d"]
            node["output"] = (
                {"inline": output["inline"]}
                if "inline" in output
                else {"url": output["url"], "bytes": output["bytes"]}
            )
    node_list = list(nodes.values())
    total = started.get("totalNodes")
    done = [n for n in node_list if n["status"] not in ("running", "waiting")]
    result: dict[str, Any] = {
        "executionId": execution_id,
        "workflowId": fields["W"].decode() if "W" in fields else started.get("workflowId"),
        "status": finished.get("status", "unknown")
        if finished is not None
        else ("waiting" if waiting else "running"),
        "finished": finished is not None,
        "waiting": waiting,
        "nodes": node_list,
        "progress": {
            "completedNodes": len(done),
            "runningNodes": len(node_list) - len(done),
            "failedNodes": sum(1 for n in done if n["status"] == "error"),
            "totalNodes": total if isinstance(total, int) else None,
        },
    }
    for key in ("mode", "startedAt", "workflowName", "retryOf"):
        if key in started:
            result[key] = started[key]
    if isinstance(total, int):
        result["totalNodes"] = total
    started_ms = _millis(started.get("startedAt"))
    if started_ms is not None:
        end = int(fields["T"]) if "T" in fields else (now or time.time()) * 1000
        result["elapsedMs"] = max(0, int(end - started_ms))
    if finished is not None:
        result["finishedEvent"] = finished
    if "r" in fields:
        result["recovered"] = True
    subworkflows = [_decode(v) for k, v in fields.items() if k.startswith("s:")]
    if subworkflows:
        result["subworkflows"] = [s["data"] | {"event": s["type"]} for s in subworkflows]
    return result
