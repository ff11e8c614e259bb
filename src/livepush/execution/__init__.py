"""Execution progress: the relay (one stream per execution, its state, large outputs), the
feature that plugs it into a node (followers, chunked outputs, snapshots), and the Python
helpers that publish n8n's events through any `ExecutionSink`."""

from livepush.execution.helpers import Execution, NodeRun
from livepush.execution.sink import EventRequest, ExecutionSink

__all__ = ["EventRequest", "Execution", "ExecutionSink", "NodeRun"]
