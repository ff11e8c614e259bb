"""Stable error codes and WebSocket close codes of the livepush protocol.

Codes are part of the public contract (docs/protocol.md): clients branch on them, so a code is
never renamed or reused for another meaning.
"""

from __future__ import annotations

from enum import IntEnum, StrEnum


class ErrorCode(StrEnum):
    """Machine-readable error codes carried in error replies and HTTP error bodies."""

    INVALID_JSON = "invalid_json"
    INVALID_MESSAGE = "invalid_message"
    UNKNOWN_COMMAND = "unknown_command"
    BINARY_NOT_SUPPORTED = "binary_not_supported"
    MESSAGE_TOO_LARGE = "message_too_large"
    RATE_LIMITED = "rate_limited"
    INVALID_CHANNEL = "invalid_channel"
    FORBIDDEN = "forbidden"
    NOT_SUBSCRIBED = "not_subscribed"
    TOO_MANY_SUBSCRIPTIONS = "too_many_subscriptions"
    AUTHORIZATION_UNAVAILABLE = "authorization_unavailable"
    UNAUTHORIZED = "unauthorized"
    TOKEN_INVALID = "token_invalid"
    TOKEN_EXPIRED = "token_expired"
    TOKEN_USER_MISMATCH = "token_user_mismatch"
    ORIGIN_NOT_ALLOWED = "origin_not_allowed"
    PUSH_REF_REQUIRED = "push_ref_required"
    PUSH_REF_INVALID = "push_ref_invalid"
    PUSH_REF_IN_USE = "push_ref_in_use"
    SESSION_NOT_FOUND = "session_not_found"
    TOO_MANY_CONNECTIONS = "too_many_connections"
    NOT_ACCEPTABLE = "not_acceptable"
    INVALID_API_KEY = "invalid_api_key"
    PUBLISH_DISABLED = "publish_disabled"
    BAD_REQUEST = "bad_request"
    PAYLOAD_TOO_LARGE = "payload_too_large"
    REQUEST_TOO_LARGE = "request_too_large"
    TOO_MANY_HANDSHAKES = "too_many_handshakes"
    SERVER_FULL = "server_full"
    SHUTTING_DOWN = "shutting_down"
    ENGINE_UNAVAILABLE = "engine_unavailable"
    EXECUTION_NOT_FOUND = "execution_not_found"
    LOCK_HELD = "lock_held"
    LOCK_NOT_HELD = "lock_not_held"
    LOCK_LOST = "lock_lost"
    VERSION_CONFLICT = "version_conflict"
    OUTPUT_NOT_FOUND = "output_not_found"
    READ_ONLY = "read_only"
    DOCUMENT_TOO_LARGE = "document_too_large"
    INTERNAL_ERROR = "internal_error"


class CloseCode(IntEnum):
    """WebSocket close codes the server sends (SSE streams end with an equivalent event)."""

    NORMAL = 1000
    GOING_AWAY = 1001
    PROTOCOL_ERROR = 1002
    #: Not sent: what a client sees when the server drops a peer that stopped answering pings.
    ABNORMAL_CLOSURE = 1006
    INVALID_PAYLOAD = 1007
    POLICY_VIOLATION = 1008
    MESSAGE_TOO_BIG = 1009
    INTERNAL_ERROR = 1011
    SERVICE_RESTART = 1012
    TRY_AGAIN_LATER = 1013
    TOKEN_EXPIRED = 4001
    FORBIDDEN = 4003
    SLOW_CONSUMER = 4008
    REPLACED = 4009
    RATE_LIMITED = 4029


class ProtocolError(Exception):
    """An error the client caused; reported to that client with a stable code."""

    def __init__(self, code: ErrorCode, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        #: Seconds after which trying again may succeed (HTTP `Retry-After`), if known.
        self.retry_after = retry_after
