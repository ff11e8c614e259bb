"""Publishing an execution's progress from Python: n8n's events, built right.

    execution = Execution(sink, "1042", "wf-7", push_ref="k3j4h5", total_nodes=3)
    await execution.started(workflow_name="Sync CRM")
    await execution.node_before("Webhook")
    await execution.node_after("Webhook", output={"main": [[{"json": {"id": 1}}]]})
    await execution.node_before("HTTP Request")
    await execution.node_after("HTTP Request", error={"message": "404", "description": "..."})
    await execution.finished("error")

The sink is an `ExecutionSink` (`execution/sink.py`): a node's `Executions` feature (in
process), `livepush.publisher.Publisher` (through Redis, from workers) or
`livepush.publisher.HttpPublisher` (the HTTP API). The helpers keep n8n's bookkeeping: the
`executionIndex` of every node run, start times and durations, which node fed which
(`source`), item counts per connection type, and livepush's progress fields (node i of n).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any, Literal

from livepush.execution.sink import ExecutionSink
from livepush.protocol.execution import ExecutionStatus, WorkflowExecuteMode

Items = list[dict[str, Any]]
#: A node's output: connection type -> one list of items per output of the node.
Output = dict[str, list[Items]]


def _now_ms() -> int:
    return int(time.time() * 1000)


def iso_now() -> str:
    """Now as n8n's JSON dates: ISO 8601 with milliseconds, in UTC."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class NodeRun:
    """One run of a node: its place in the execution and its timing."""

    __slots__ = ("execution_index", "node_index", "node_name", "source", "start_time")

    def __init__(
        self,
        node_name: str,
        execution_index: int,
        start_time: int,
        source: list[dict[str, Any] | None],
        node_index: int | None,
    ) -> None:
        self.node_name = node_name
        self.execution_index = execution_index
        self.start_time = start_time
        self.source = source
        self.node_index = node_index


class Execution:
    """The events of one execution, published through a sink."""

    def __init__(
        self,
        sink: ExecutionSink,
        execution_id: str,
        workflow_id: str,
        *,
        push_ref: str | None = None,
        mode: WorkflowExecuteMode = "manual",
        workflow_name: str | None = None,
        total_nodes: int | None = None,
    ) -> None:
        self.sink = sink
        self.execution_id = execution_id
        self.workflow_id = workflow_id
        self.push_ref = push_ref
        self.mode = mode
        self.workflow_name = workflow_name
        self.total_nodes = total_nodes
        self.started_at: str | None = None
        self._next_index = 0
        self._running: dict[str, NodeRun] = {}
        self._nodes_seen: dict[str, int] = {}

    async def _publish(self, event_type: str, data: dict[str, Any]) -> Any:
        return await self.sink.publish_execution(
            event_type, data, push_ref=self.push_ref, workflow_id=self.workflow_id
        )

    def _progress(self, run: NodeRun) -> dict[str, Any] | None:
        if run.node_index is None:
            return None
        progress: dict[str, Any] = {"nodeIndex": run.node_index}
        if self.total_nodes is not None:
            progress["totalNodes"] = self.total_nodes
        return progress

    async def started(
        self,
        *,
        started_at: str | None = None,
        retry_of: str | None = None,
        flatted_run_data: str = "[{}]",
    ) -> Any:
        """`executionStarted`."""
        self.started_at = started_at or iso_now()
        data: dict[str, Any] = {
            "executionId": self.execution_id,
            "mode": self.mode,
            "startedAt": self.started_at,
            "workflowId": self.workflow_id,
            "flattedRunData": flatted_run_data,
        }
        if self.workflow_name is not None:
            data["workflowName"] = self.workflow_name
        if retry_of is not None:
            data["retryOf"] = retry_of
        if self.total_nodes is not None:
            data["totalNodes"] = self.total_nodes
        return await self._publish("executionStarted", data)

    async def node_before(
        self,
        node_name: str,
        *,
        source: list[str | dict[str, Any] | None] | None = None,
        node_index: int | None = None,
    ) -> NodeRun:
        """`nodeExecuteBefore`: the node starts a run. `source`: the nodes that fed it (names,
        or n8n's `ISourceData` objects); `node_index`: its place in the workflow (1..n; by
        default, the order in which nodes first ran)."""
        if node_index is None:
            node_index = self._nodes_seen.setdefault(node_name, len(self._nodes_seen) + 1)
        sources: list[dict[str, Any] | None] = [
            {"previousNode": s, "previousNodeOutput": 0, "previousNodeRun": 0}
            if isinstance(s, str)
            else s
            for s in (source or [])
        ]
        run = NodeRun(node_name, self._next_index, _now_ms(), sources, node_index)
        self._next_index += 1
        self._running[node_name] = run
        data: dict[str, Any] = {
            "executionId": self.execution_id,
            "nodeName": node_name,
            "data": {
                "startTime": run.start_time,
                "executionIndex": run.execution_index,
                "source": sources,
                "hints": [],
            },
        }
        progress = self._progress(run)
        if progress is not None:
            data["progress"] = progress
        await self._publish("nodeExecuteBefore", data)
        return run

    async def node_after(
        self,
        node_name: str,
        *,
        output: Output | None = None,
        error: dict[str, Any] | None = None,
        status: ExecutionStatus | None = None,
        execution_time: float | None = None,
        send_data: bool = True,
    ) -> None:
        """`nodeExecuteAfter`, then (with `send_data`) `nodeExecuteAfterData` with the output.
        `error`: n8n's node error shape (`message`, `description`, `node`...); the node is
        added to it when absent."""
        run = self._running.pop(node_name, None)
        if run is None:
            raise ValueError(f"node {node_name!r} has no running run: call node_before first")
        output = output if output is not None else {"main": [[]]}
        task: dict[str, Any] = {
            "startTime": run.start_time,
            "executionIndex": run.execution_index,
            "source": run.source,
            "hints": [],
            "executionTime": (
                execution_time if execution_time is not None else _now_ms() - run.start_time
            ),
            "executionStatus": status or ("error" if error is not None else "success"),
        }
        if error is not None:
            task["error"] = {"node": {"name": node_name}} | error
        counts = {kind: [len(items) for items in outputs] for kind, outputs in output.items()}
        after: dict[str, Any] = {
            "executionId": self.execution_id,
            "nodeName": node_name,
            "data": task,
            "itemCountByConnectionType": counts,
        }
        progress = self._progress(run)
        if progress is not None:
            after["progress"] = progress
        await self._publish("nodeExecuteAfter", after)
        if send_data:
            await self._publish(
                "nodeExecuteAfterData",
                {
                    "executionId": self.execution_id,
                    "nodeName": node_name,
                    "data": task | {"data": output},
                    "itemCountByConnectionType": counts,
                },
            )

    async def waiting(self) -> Any:
        """`executionWaiting`: paused in a Wait or Form node."""
        return await self._publish("executionWaiting", {"executionId": self.execution_id})

    async def finished(self, status: ExecutionStatus = "success") -> Any:
        """`executionFinished`."""
        return await self._publish(
            "executionFinished",
            {"executionId": self.execution_id, "workflowId": self.workflow_id, "status": status},
        )

    async def recovered(self) -> Any:
        """`executionRecovered`."""
        return await self._publish("executionRecovered", {"executionId": self.execution_id})

    def _child(self, parent_node_name: str, child_execution_id: str) -> dict[str, Any]:
        return {
            "parentExecutionId": self.execution_id,
            "parentNodeName": parent_node_name,
            "executionId": child_execution_id,
        }

    async def subworkflow_started(
        self, parent_node_name: str, child_execution_id: str, total_nodes: int
    ) -> Any:
        """`subworkflowExecutionStarted`: a node of this execution started a sub-workflow."""
        data = self._child(parent_node_name, child_execution_id) | {"totalNodes": total_nodes}
        return await self._publish("subworkflowExecutionStarted", data)

    async def subworkflow_progress(
        self,
        parent_node_name: str,
        child_execution_id: str,
        current_node_name: str,
        current_node_index: int,
        total_nodes: int,
        phase: Literal["running", "success", "error"],
    ) -> Any:
        """`subworkflowNodeProgress`: a node of the sub-workflow ran."""
        data = self._child(parent_node_name, child_execution_id) | {
            "currentNodeName": current_node_name,
            "currentNodeIndex": current_node_index,
            "totalNodes": total_nodes,
            "phase": phase,
        }
        return await self._publish("subworkflowNodeProgress", data)

    async def subworkflow_finished(
        self, parent_node_name: str, child_execution_id: str, status: ExecutionStatus
    ) -> Any:
        """`subworkflowExecutionFinished`."""
        data = self._child(parent_node_name, child_execution_id) | {"status": status}
        return await self._publish("subworkflowExecutionFinished", data)
