"""Transports: WebSocket and Server-Sent Events on the same `/rest/push` URL."""
