"""Engines: the broker (moves publications between nodes, keeps history), the presence, lock,
execution and document stores. `base.py` and `documents.py` hold the contracts, `memory.py`
(with `sqlite.py` for its documents) and `redis/` implement them, `factory.py` builds the
configured engine."""
