"""Engines: the broker (moves publications between nodes, keeps history) and the presence store."""
