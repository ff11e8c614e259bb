"""`livepush demo`: a simulated workflow engine that runs n8n-like executions against a
running server through its HTTP API.

Each execution is what an n8n instance pushes for a manual run started from one tab:
`executionStarted`, then per node `nodeExecuteBefore`, `nodeExecuteAfter` and
`nodeExecuteAfterData` (with output items of about `item_bytes` in total), and
`executionFinished`. Some executions fail at a node (n8n's error shape, status `error`), some
wait in a Wait node (`executionWaiting`, then resume) and some run a sub-workflow
(`subworkflowExecutionStarted` / `subworkflowNodeProgress` / `subworkflowExecutionFinished`).
What happens in each execution is drawn from a random generator seeded per execution, so a
`seed` gives the same executions whatever the concurrency.

    options = DemoOptions(url="http://127.0.0.1:8080", api_key=key, push_ref="abc",
                          workflow_id="42", executions=10)
    report = await run_demo(options)
"""

from __future__ import annotations

import asyncio
import contextvars
import os
import random
import string
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec

from livepush.execution.helpers import Execution, Items, Output
from livepush.execution.sink import EventRequest, ExecutionSink
from livepush.protocol.execution import ExecutionStatus
from livepush.publisher import HttpPublisher

#: The first node of every workflow: (name, type).
TRIGGERS = [
    ("Webhook", "n8n-nodes-base.webhook"),
    ("When clicking 'Execute workflow'", "n8n-nodes-base.manualTrigger"),
    ("Schedule Trigger", "n8n-nodes-base.scheduleTrigger"),
]
#: The nodes that follow it.
NODES = [
    ("Set", "n8n-nodes-base.set"),
    ("HTTP Request", "n8n-nodes-base.httpRequest"),
    ("IF", "n8n-nodes-base.if"),
    ("Code", "n8n-nodes-base.code"),
    ("Merge", "n8n-nodes-base.merge"),
    ("Filter", "n8n-nodes-base.filter"),
    ("Split Out", "n8n-nodes-base.splitOut"),
    ("Aggregate", "n8n-nodes-base.aggregate"),
    ("Sort", "n8n-nodes-base.sort"),
    ("Remove Duplicates", "n8n-nodes-base.removeDuplicates"),
    ("Date & Time", "n8n-nodes-base.dateTime"),
    ("Postgres", "n8n-nodes-base.postgres"),
    ("Google Sheets", "n8n-nodes-base.googleSheets"),
    ("Slack", "n8n-nodes-base.slack"),
]
WAIT = ("Wait", "n8n-nodes-base.wait")
SUBWORKFLOW = ("Execute Workflow", "n8n-nodes-base.executeWorkflow")
#: Errors a node may fail with: (message, description, httpCode or None).
ERRORS = [
    (
        "The resource you are requesting could not be found",
        '404 - {"error":"Not Found"}',
        "404",
    ),
    (
        "The service is receiving too many requests from you",
        '429 - {"message":"Rate limit exceeded, retry in 30 seconds"}',
        "429",
    ),
    ("Cannot read properties of undefined (reading 'email') [line 4]", None, None),
    ("connect ECONNREFUSED 10.0.0.12:5432", "Connection refused by the database server", None),
]
#: The field `stamp` adds to every event's data: `time.time_ns()` just before it is sent.
STAMP_FIELD = "sentAtNs"


@dataclass
class DemoOptions:
    """What to run (see `livepush demo --help`)."""

    url: str
    api_key: str
    push_ref: str
    workflow_id: str
    nodes: int = 8
    executions: int = 1
    item_bytes: int = 1024
    #: Milliseconds a node runs: drawn uniformly from this range (0, 0 for benchmarks).
    delay_ms: tuple[float, float] = (20.0, 50.0)
    #: Milliseconds an execution waits in a Wait node.
    wait_ms: tuple[float, float] = (200.0, 500.0)
    error_rate: float = 0.1
    wait_rate: float = 0.1
    subworkflow_rate: float = 0.1
    #: Executions running at once (None: all).
    concurrency: int | None = None
    seed: int | None = None
    #: Execution ids are this prefix and 1, 2, ... (default: `demo-` and a random part).
    execution_prefix: str | None = None
    workflow_name: str = "livepush demo"
    #: Add `sentAtNs` to every event's data (n8n ignores it): for latency measurements.
    stamp: bool = False
    timeout: float = 60.0


@dataclass
class DemoReport:
    """What a run did."""

    executions: int = 0
    events: int = 0
    #: Bytes of event data (JSON) sent.
    bytes: int = 0
    seconds: float = 0.0
    statuses: Counter[str] = field(default_factory=Counter)
    execution_ids: list[str] = field(default_factory=list)
    #: Events published per execution id.
    events_per_execution: dict[str, int] = field(default_factory=dict)

    def summary(self) -> str:
        """One line."""
        statuses = ", ".join(f"{n} {status}" for status, n in sorted(self.statuses.items()))
        rate = self.events / self.seconds if self.seconds > 0 else 0.0
        return (
            f"livepush demo: {self.executions} executions ({statuses}), {self.events} events, "
            f"{_human_bytes(self.bytes)}, {self.seconds:.2f} s ({rate:,.0f} events/s)"
        )


def _human_bytes(n: int) -> str:
    if n < 10_000:
        return f"{n} bytes"
    if n < 10_000_000:
        return f"{n / 1000:.1f} KB"
    return f"{n / 1_000_000:.1f} MB"


# --------------------------------------------------------------------------- the plan


@dataclass
class NodePlan:
    """One node of a planned execution."""

    name: str
    type: str
    delay: float  # seconds it runs
    items: int  # output items
    payload: int  # characters of filler per item
    error: tuple[str, str | None, str | None] | None = None
    wait: float | None = None  # seconds the execution waits in it
    subworkflow_nodes: list[str] | None = None


@dataclass
class ExecutionPlan:
    """What one execution will do."""

    execution_id: str
    nodes: list[NodePlan]

    @property
    def status(self) -> ExecutionStatus:
        return "error" if any(n.error for n in self.nodes) else "success"


def _item_layout(item_bytes: int) -> tuple[int, int]:
    """(items, filler characters per item) for outputs of about `item_bytes` of JSON."""
    count = max(1, min(1000, item_bytes // 512))
    per_item = item_bytes // count
    overhead = len(msgspec.json.encode([_item(count - 1, "", 0)])) - 1
    return count, max(0, per_item - overhead)


def _item(index: int, filler: str, run: int) -> dict[str, Any]:
    return {
        "json": {"id": index + 1, "run": run, "name": f"Item {index + 1}", "text": filler},
        "pairedItem": {"item": index},
    }


def _unique_names(kinds: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """n8n's naming: the second `Set` node is `Set1`, the third `Set2`."""
    seen: Counter[str] = Counter()
    named = []
    for name, node_type in kinds:
        count = seen[name]
        seen[name] += 1
        named.append((f"{name}{count}" if count else name, node_type))
    return named


def plan_execution(options: DemoOptions, index: int, execution_id: str) -> ExecutionPlan:
    """The nodes of execution number `index` (0-based), drawn from its own generator."""
    rng = random.Random(None if options.seed is None else f"{options.seed}/{index}")
    total = max(1, options.nodes)
    kinds = [rng.choice(TRIGGERS)] + [rng.choice(NODES) for _ in range(total - 1)]
    middle = list(range(1, total))
    rng.shuffle(middle)
    wait_at = middle.pop() if middle and rng.random() < options.wait_rate else None
    sub_at = middle.pop() if middle and rng.random() < options.subworkflow_rate else None
    if wait_at is not None:
        kinds[wait_at] = WAIT
    if sub_at is not None:
        kinds[sub_at] = SUBWORKFLOW
    error_at = rng.randrange(1, total) if total > 1 and rng.random() < options.error_rate else None
    items, payload = _item_layout(options.item_bytes)
    plans = []
    for position, (name, node_type) in enumerate(_unique_names(kinds)):
        if error_at is not None and position > error_at:
            break
        node = NodePlan(name, node_type, rng.uniform(*options.delay_ms) / 1000, items, payload)
        if position == error_at:
            node.error = rng.choice(ERRORS)
        elif position == wait_at:
            node.wait = rng.uniform(*options.wait_ms) / 1000
        elif position == sub_at:
            node.subworkflow_nodes = [
                name
                for name, _ in _unique_names(
                    [rng.choice(TRIGGERS)] + [rng.choice(NODES) for _ in range(rng.randint(1, 4))]
                )
            ]
        plans.append(node)
    return ExecutionPlan(execution_id, plans)


# --------------------------------------------------------------------------- running

#: The execution an event belongs to (each execution runs in its own task).
_execution_id: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "demo_execution", default=None
)


class CountingSink(ExecutionSink):
    """Encodes each event once, counts it, optionally stamps it, and publishes it."""

    def __init__(
        self,
        publisher: HttpPublisher,
        report: DemoReport,
        *,
        stamp: bool = False,
        gate: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.publisher = publisher
        self.report = report
        self.stamp = stamp
        self.gate = gate

    async def submit(self, request: EventRequest) -> Any:
        """Count (and stamp) the event, then hand it to the publisher."""
        data = request.data
        if self.gate is not None:
            await self.gate()
        if isinstance(data, dict):
            if self.stamp:
                data[STAMP_FIELD] = time.time_ns()
            data = msgspec.json.encode(data)
        self.report.events += 1
        self.report.bytes += len(data)
        execution_id = _execution_id.get()
        if execution_id is not None:
            counts = self.report.events_per_execution
            counts[execution_id] = counts.get(execution_id, 0) + 1
        return await self.publisher.submit(request._replace(data=data))


class _Filler:
    """Filler text for item fields, made once per run: every item shares a slice."""

    def __init__(self, seed: int | None) -> None:
        rng = random.Random(seed)
        words = [
            "".join(rng.choices(string.ascii_lowercase, k=rng.randint(2, 9))) for _ in range(512)
        ]
        self._base = " ".join(words)
        self._cache: dict[int, str] = {}

    def text(self, length: int) -> str:
        text = self._cache.get(length)
        if text is None:
            reps = length // len(self._base) + 1
            text = self._cache[length] = (self._base * reps)[:length]
        return text


def _output(node: NodePlan, filler: _Filler, run: int) -> Output:
    text = filler.text(node.payload)
    items: Items = [_item(i, text, run) for i in range(node.items)]
    if node.type == "n8n-nodes-base.if":  # true and false branches
        cut = (len(items) + 1) // 2
        return {"main": [items[:cut], items[cut:]]}
    return {"main": [items]}


def _node_error(node: NodePlan, position: int) -> dict[str, Any]:
    assert node.error is not None
    message, description, http_code = node.error
    error: dict[str, Any] = {
        "message": message,
        "timestamp": int(time.time() * 1000),
        "name": "NodeApiError" if http_code else "NodeOperationError",
        "context": {},
        "node": {
            "id": f"{position:08x}-demo-node",
            "name": node.name,
            "type": node.type,
            "typeVersion": 1,
            "position": [position * 220, 300],
            "parameters": {},
        },
    }
    if description is not None:
        error["description"] = description
    if http_code is not None:
        error["httpCode"] = http_code
    return error


async def run_execution(
    sink: CountingSink, options: DemoOptions, plan: ExecutionPlan, filler: _Filler
) -> ExecutionStatus:
    """Publish one execution from its plan; returns its final status."""
    execution = Execution(
        sink,
        plan.execution_id,
        options.workflow_id,
        push_ref=options.push_ref,
        workflow_name=options.workflow_name,
        total_nodes=max(1, options.nodes),
    )
    _execution_id.set(plan.execution_id)
    await execution.started()
    previous: str | None = None
    for position, node in enumerate(plan.nodes):
        await execution.node_before(
            node.name, source=[previous] if previous else [], node_index=position + 1
        )
        if node.subworkflow_nodes:
            child = f"{plan.execution_id}.{position + 1}"
            count = len(node.subworkflow_nodes)
            await execution.subworkflow_started(node.name, child, count)
            for index, child_node in enumerate(node.subworkflow_nodes):
                await execution.subworkflow_progress(
                    node.name, child, child_node, index + 1, count, "running"
                )
                if node.delay:
                    await asyncio.sleep(node.delay / count)
                await execution.subworkflow_progress(
                    node.name, child, child_node, index + 1, count, "success"
                )
            await execution.subworkflow_finished(node.name, child, "success")
        elif node.wait is not None:
            await execution.waiting()
            await asyncio.sleep(node.wait)
        elif node.delay:
            await asyncio.sleep(node.delay)
        if node.error is not None:
            await execution.node_after(
                node.name, output={"main": [[]]}, error=_node_error(node, position)
            )
            break
        await execution.node_after(node.name, output=_output(node, filler, position))
        previous = node.name
    status = plan.status
    await execution.finished(status)
    return status


def new_prefix() -> str:
    """`demo-` and 6 random characters: ids unique per run."""
    alphabet = string.ascii_lowercase + string.digits
    return "demo-" + "".join(alphabet[b % len(alphabet)] for b in os.urandom(6)) + "-"


async def run_demo(
    options: DemoOptions,
    *,
    publisher: HttpPublisher | None = None,
    gate: Callable[[], Awaitable[None]] | None = None,
) -> DemoReport:
    """Run the executions; raises `PublishFailed` if the server refuses an event (the
    executions still running are cancelled). `gate` is awaited before every event (flow
    control for benchmarks)."""
    report = DemoReport()
    prefix = options.execution_prefix if options.execution_prefix is not None else new_prefix()
    plans = [
        plan_execution(options, index, f"{prefix}{index + 1}")
        for index in range(options.executions)
    ]
    report.execution_ids = [plan.execution_id for plan in plans]
    filler = _Filler(options.seed)
    limit = asyncio.Semaphore(options.concurrency or max(1, options.executions))
    own = publisher is None
    http = publisher or HttpPublisher(options.url, options.api_key, timeout=options.timeout)
    sink = CountingSink(http, report, stamp=options.stamp, gate=gate)

    async def one(plan: ExecutionPlan) -> None:
        async with limit:
            status = await run_execution(sink, options, plan, filler)
            report.statuses[status] += 1
            report.executions += 1

    started = time.monotonic()
    try:
        async with asyncio.TaskGroup() as group:
            for plan in plans:
                group.create_task(one(plan))
    except BaseExceptionGroup as group_error:
        # the first failure is the cause; the others are its echoes (same server)
        raise group_error.exceptions[0] from None
    finally:
        report.seconds = time.monotonic() - started
        if own:
            await http.close()
    return report


def parse_range(value: str) -> tuple[float, float]:
    """`"20-50"` -> (20.0, 50.0); `"30"` -> (30.0, 30.0)."""
    low, sep, high = value.partition("-")
    first = float(low)
    second = float(high) if sep else first
    if first < 0 or second < first:
        raise ValueError(f"expected MIN-MAX with 0 <= MIN <= MAX, got {value!r}")
    return first, second


__all__ = [
    "STAMP_FIELD",
    "DemoOptions",
    "DemoReport",
    "ExecutionPlan",
    "parse_range",
    "plan_execution",
    "run_demo",
]
