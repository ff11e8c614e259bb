"""Prometheus metrics of the execution path, in the node's registry (served on `/metrics`)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge


class ExecutionMetrics:
    """Followers of executions and chunked node outputs."""

    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.output_transfers = Gauge(
            "livepush_output_transfers",
            "Connections receiving a chunked node output right now",
            registry=r,
        )
        self.output_chunks = Counter(
            "livepush_output_chunks",
            "Chunks of large node outputs sent, and their bytes",
            ["unit"],
            registry=r,
        )
        self.follows = Counter(
            "livepush_execution_follows",
            "Subscriptions to executions started by the server (followers of a tab or workflow)",
            registry=r,
        )
