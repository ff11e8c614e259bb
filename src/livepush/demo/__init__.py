"""`livepush demo`: what shows livepush working without n8n. `executions.py` is a simulated
workflow engine that runs n8n-like executions against a server through its HTTP API."""
