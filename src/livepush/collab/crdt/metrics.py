"""Prometheus metrics of CRDT documents, in the node's registry (served on `/metrics`)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge


class CrdtMetrics:
    """Rooms, connections, updates and stored bytes of the CRDT endpoint."""

    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.rooms = Gauge("livepush_crdt_rooms", "CRDT documents open on this node", registry=r)
        self.connections = Gauge(
            "livepush_crdt_connections", "Open CRDT connections", ["access"], registry=r
        )
        self.updates = Counter(
            "livepush_crdt_updates",
            "Document updates from clients: applied, or refused (read_only, document_too_large, "
            "message_too_large, invalid_message, engine_unavailable)",
            ["result"],
            registry=r,
        )
        self.remote_updates = Counter(
            "livepush_crdt_remote_updates",
            "Document updates stored by other nodes and applied here",
            registry=r,
        )
        self.stored_bytes = Counter(
            "livepush_crdt_stored_bytes", "Bytes of document updates stored", registry=r
        )
        self.compactions = Counter(
            "livepush_crdt_compactions",
            "Documents whose updates were merged into their snapshot",
            registry=r,
        )
        self.awareness = Counter(
            "livepush_crdt_awareness_updates",
            "Awareness states accepted from clients and other nodes",
            registry=r,
        )

    def refused(self, reason: str) -> None:
        """Count an update refused, by reason."""
        self.updates.labels(reason).inc()
