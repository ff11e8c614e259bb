"""livepush: real-time push and collaboration server."""

__version__ = "0.1.0"
