"""Channels, sessions (per-connection queues), the hub (local routing) and the node."""
