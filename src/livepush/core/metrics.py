"""Prometheus metrics of one node: connections, messages, bytes, latency, drops, errors. Each
node has its own registry, so several nodes can live in one process (tests) without clashing;
`/metrics` serves it in the text format. Features register their own series in the same
registry (`execution/metrics.py`, `collab/metrics.py`, `collab/crdt/metrics.py`).

Hot-path counts are taken once per publication (recipients as the amount), never per recipient.
"""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from livepush.protocol.catalogue import metric_label
from livepush.protocol.envelope import Publication

_LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)


class Metrics:
    """The node's counters, gauges and histograms."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.connections = Gauge(
            "livepush_connections", "Open connections", ["transport"], registry=r
        )
        self.connections_total = Counter(
            "livepush_connections_opened", "Connections accepted", ["transport"], registry=r
        )
        self.disconnects = Counter(
            "livepush_disconnects", "Connections closed, by reason", ["reason"], registry=r
        )
        self.handshake_failures = Counter(
            "livepush_handshake_failures", "Refused handshakes, by error code", ["code"], registry=r
        )
        self.publications = Counter(
            "livepush_publications", "Publications accepted, by type", ["type"], registry=r
        )
        self.messages_out = Counter(
            "livepush_messages_out",
            "Messages handed to connections, by type",
            ["type"],
            registry=r,
        )
        self.bytes_out = Counter(
            "livepush_bytes_out",
            "Payload bytes handed to connections, by type",
            ["type"],
            registry=r,
        )
        self.messages_in = Counter(
            "livepush_messages_in", "Client messages received, by type", ["type"], registry=r
        )
        self.bytes_in = Counter(
            "livepush_bytes_in", "Client message bytes received, by type", ["type"], registry=r
        )
        self.drops = Counter(
            "livepush_dropped_messages",
            "Messages not delivered, by reason",
            ["reason"],
            registry=r,
        )
        self.errors = Counter(
            "livepush_errors", "Error replies sent to clients, by code", ["code"], registry=r
        )
        self.recoveries = Counter(
            "livepush_recoveries",
            "Subscriptions with a since position, by outcome",
            ["result"],
            registry=r,
        )
        self.subscriptions = Gauge(
            "livepush_subscriptions", "Channel subscriptions of open connections", registry=r
        )
        self.channels = Gauge("livepush_channels", "Channels with local subscribers", registry=r)
        self.latency = Histogram(
            "livepush_publish_to_write_seconds",
            "Time from publish to the frame being written to the connections",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self._out_by_type: dict[str, tuple[Any, Any]] = {}
        self._drops_by_reason: dict[str, Any] = {}

    def fanned_out(self, publication: Publication, recipients: int) -> None:
        """Count one publication handed to `recipients` connections."""
        if recipients <= 0:
            return
        label = metric_label(publication.type)
        counters = self._out_by_type.get(label)
        if counters is None:
            counters = (self.messages_out.labels(label), self.bytes_out.labels(label))
            self._out_by_type[label] = counters
        counters[0].inc(recipients)
        counters[1].inc(len(publication.payload) * recipients)
        self.latency.observe(time.time() - publication.published_at)

    def received(self, message_type: str, size: int) -> None:
        """Count one client message (`message_type` is a command name or a failure label)."""
        self.messages_in.labels(message_type).inc()
        self.bytes_in.labels(message_type).inc(size)

    def observe_write_latency(self, publication: Publication) -> None:
        """A queued publication was written late: record its own latency."""
        self.latency.observe(time.time() - publication.published_at)

    def dropped(self, reason: str, count: int = 1) -> None:
        """Count messages not delivered."""
        counter = self._drops_by_reason.get(reason)
        if counter is None:
            counter = self._drops_by_reason[reason] = self.drops.labels(reason)
        counter.inc(count)

    def render(self) -> bytes:
        """The Prometheus text exposition."""
        return generate_latest(self.registry)
