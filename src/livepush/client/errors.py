"""Exceptions raised by `livepush.client`.

Every exception derives from `ClientError`, so `except ClientError` catches anything the client
raises on purpose. Server error codes (docs/protocol.md, "Error codes") are carried as `code`.
"""

from __future__ import annotations


class ClientError(Exception):
    """Base class of every error raised by the livepush client."""


class ConnectionRefused(ClientError):
    """The server refused the connection for good (HTTP 400/401/403/409 on the handshake, or
    a close code that means "do not reconnect": 4003, 4009).

    `status` is the HTTP status (None for a close code), `code` the server's error code
    (`token_expired`, `forbidden`, ... or None when the answer carried none, e.g. from a
    proxy), `close_code` the WebSocket close code when the refusal was a close."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        close_code: int | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.close_code = close_code


class ConnectionFailed(ClientError):
    """`max_attempts` consecutive connection attempts failed; the client gave up."""


class ClientClosed(ClientError):
    """The client is closed (by `close()`, a permanent refusal, a 4009/4003 close, or after
    `max_attempts`): nothing more can be sent."""


class CommandError(ClientError):
    """The server answered a command with an `error` message.

    `code` is the server's stable error code (`forbidden`, `not_subscribed`, `invalid_channel`,
    `rate_limited`, ...), `message` its human-readable text, `command` the command's type."""

    def __init__(self, code: str, message: str, command: str) -> None:
        super().__init__(f"{command}: {code}: {message}")
        self.code = code
        self.message = message
        self.command = command


class CommandTimeout(ClientError):
    """No reply arrived within `command_timeout` seconds of the call (queue time included)."""


class QueueFull(ClientError):
    """The client is not connected and `command_queue_size` commands already wait: the new
    command was refused (never silently dropped). Retry later, or wait for the connection."""


class ConnectionLost(ClientError):
    """The connection dropped while a non-idempotent command was in flight: the server may or
    may not have executed it, so the client does not send it again."""


class OutputFetchError(ClientError):
    """`fetch_output()` failed: the server refused (`status`, and `code` from its JSON error
    body: `output_not_found`, `forbidden`, `token_expired`, ...), the answer was not JSON
    (`code` `invalid_json`), or the request failed on the network (`status` None)."""

    def __init__(
        self, message: str, *, status: int | None = None, code: str | None = None, url: str = ""
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.url = url
