"""CRDT documents: Yjs sync and awareness (y-protocols) per workflow, stored by the engine.

`awareness.py` (awareness rules, pure), `room.py` (open documents), `endpoint.py` (the
WebSocket endpoint), `metrics.py`. The wire format is `livepush.protocol.crdt`; the documents
are stored by the engine's document store (`livepush.engines.documents`).
"""
