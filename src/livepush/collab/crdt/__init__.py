"""CRDT documents: Yjs sync and awareness (y-protocols) per workflow, stored by the engine.

`awareness.py` (awareness rules, pure), `store.py` (the store contract) with `store_sqlite.py`
and `store_redis.py`, `room.py` (open documents), `endpoint.py` (the WebSocket endpoint),
`metrics.py`. The wire format is `livepush.protocol.crdt`.
"""
