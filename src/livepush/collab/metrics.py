"""Prometheus metrics of collaboration rooms, in the node's registry (served on `/metrics`)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge


class CollabMetrics:
    """Rooms, presence lists and ephemeral updates (cursors...)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.rooms = Gauge(
            "livepush_collab_rooms", "Collaboration rooms with editors on this node", registry=r
        )
        self.presence_sent = Counter(
            "livepush_collab_presence_sent",
            "collaboratorsChanged messages handed to connections",
            registry=r,
        )
        self.ephemeral = Counter(
            "livepush_collab_ephemeral",
            "Ephemeral updates (cursors...): received, coalesced (replaced by a newer one before "
            "the tick), rate_limited (dropped), and batches delivered to connections",
            ["outcome"],
            registry=r,
        )
        self.ephemeral_coalesced = self.ephemeral.labels("coalesced")
        self.ephemeral_received = self.ephemeral.labels("received")
        self.ephemeral_limited = self.ephemeral.labels("rate_limited")
        self.ephemeral_delivered = self.ephemeral.labels("delivered")
