"""Execution progress: the relay (one stream per execution, its state, large outputs), the
per-connection chunked transfers, and the Python helpers that publish n8n's events."""

from livepush.execution.helpers import Execution, ExecutionSink, NodeRun

__all__ = ["Execution", "ExecutionSink", "NodeRun"]
