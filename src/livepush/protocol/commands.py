"""Client-to-server messages: livepush commands (with a request id and a reply) and n8n's flat
messages (`{"type":"heartbeat"}`, `{"type":"workflowOpened","workflowId":...}`), accepted as
they are.

Decoding is two-step so every failure gets its own stable code: bytes to JSON
(`invalid_json`), then the `type` lookup (`unknown_command`), then the schema
(`invalid_message`, with msgspec's path to the offending field).
"""

from __future__ import annotations

from typing import Annotated, Any, Final

import msgspec

from livepush.protocol.decoding import JsonDecoder
from livepush.protocol.errors import ErrorCode, ProtocolError

#: Commands one SSE POST may carry (a larger batch is refused with `bad_request`).
MAX_COMMANDS_PER_POST: Final = 100

RequestId = int | Annotated[str, msgspec.Meta(max_length=64)]
Offset = Annotated[int, msgspec.Meta(ge=0)]


class Since(msgspec.Struct, frozen=True):
    """A client's last seen position in one channel."""

    epoch: Annotated[str, msgspec.Meta(max_length=64)]
    offset: Offset


class Command(msgspec.Struct, kw_only=True):
    """Base of every inbound message."""

    type: str
    id: RequestId | None = None


class Heartbeat(Command, kw_only=True):
    """n8n's client heartbeat; accepted and dropped, never answered (as n8n does)."""


class Ping(Command, kw_only=True):
    """Round trip check; answered with an empty reply."""


class Subscribe(Command, kw_only=True):
    """Join a channel, optionally recovering what was missed after `since`."""

    channel: str
    since: Since | None = None


class Unsubscribe(Command, kw_only=True):
    """Leave a channel."""

    channel: str


class Refresh(Command, kw_only=True):
    """Replace the connection's token with a fresh one for the same user."""

    token: Annotated[str, msgspec.Meta(max_length=16384)]


class Presence(Command, kw_only=True):
    """Who is in a channel the connection is subscribed to, across the cluster."""

    channel: str


class WorkflowOpened(Command, kw_only=True):
    """n8n: the editor opened a workflow; livepush subscribes the tab to `workflow:<id>` and
    makes it a collaborator (optionally with its first `state`)."""

    workflowId: str
    state: dict[str, Any] | None = None


class WorkflowClosed(Command, kw_only=True):
    """n8n: the editor closed a workflow; livepush unsubscribes the tab from `workflow:<id>`."""

    workflowId: str


class PresenceUpdate(Command, kw_only=True):
    """The tab's state in a workflow it opened (selected node, open panel, active/idle),
    shown to the other collaborators."""

    workflowId: str
    state: dict[str, Any]


class Ephemeral(Command, kw_only=True):
    """A cursor position, selection, typing indicator, viewport... of the tab in a workflow it
    opened: relayed to the other collaborators, latest value per kind per tick, never stored."""

    workflowId: str
    kind: Annotated[str, msgspec.Meta(max_length=32)]
    data: Any = None


class NodeLockRequested(Command, kw_only=True):
    """Lock one node of a workflow's canvas for this tab (`force`: take it from the same
    user's other tab)."""

    workflowId: str
    nodeId: Annotated[
        str, msgspec.Meta(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.@=+\-]+$")
    ]
    force: bool = False


class NodeLockReleased(Command, kw_only=True):
    """Let go of a node lock this tab holds."""

    workflowId: str
    nodeId: Annotated[
        str, msgspec.Meta(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.@=+\-]+$")
    ]


class WriteAccessRequested(Command, kw_only=True):
    """n8n: the tab wants the workflow's write lock (`force`: take it from the same user's
    other tab)."""

    workflowId: str
    force: bool = False


class WriteAccessReleaseRequested(Command, kw_only=True):
    """n8n: the tab lets go of the workflow's write lock."""

    workflowId: str


class WriteAccessHeartbeat(Command, kw_only=True):
    """n8n: the tab still holds (and uses) the workflow's write lock."""

    workflowId: str


class ExecutionSnapshot(Command, kw_only=True):
    """The current state of an execution, and a subscription to its stream from there."""

    executionId: Annotated[str, msgspec.Meta(max_length=128)]


COMMANDS: Final[dict[str, type[Command]]] = {
    "heartbeat": Heartbeat,
    "ping": Ping,
    "subscribe": Subscribe,
    "unsubscribe": Unsubscribe,
    "refresh": Refresh,
    "presence": Presence,
    "workflowOpened": WorkflowOpened,
    "workflowClosed": WorkflowClosed,
    "executionSnapshot": ExecutionSnapshot,
    "writeAccessRequested": WriteAccessRequested,
    "writeAccessReleaseRequested": WriteAccessReleaseRequested,
    "writeAccessHeartbeat": WriteAccessHeartbeat,
    "presenceUpdate": PresenceUpdate,
    "ephemeral": Ephemeral,
    "nodeLockRequested": NodeLockRequested,
    "nodeLockReleased": NodeLockReleased,
}

_decode_any: JsonDecoder[Any] = JsonDecoder()


def request_id_of(obj: object) -> RequestId | None:
    """The request id of a message that failed validation, if it has a usable one."""
    if isinstance(obj, dict):
        rid = obj.get("id")
        if isinstance(rid, int) and not isinstance(rid, bool):
            return rid
        if isinstance(rid, str) and len(rid) <= 64:
            return rid
    return None


class _IdOnly(msgspec.Struct):
    id: Any = None


_decode_id = JsonDecoder[_IdOnly](_IdOnly).decode


def peek_request_id(raw: str | bytes) -> RequestId | None:
    """The `id` of a message that is not otherwise decoded (a rate-limited one), if it has a
    usable one; cheap (other fields are skipped, not built)."""
    try:
        return request_id_of({"id": _decode_id(raw).id})
    except (msgspec.DecodeError, ValueError):
        return None


def decode_command(raw: str | bytes) -> Command:
    """Decode and validate one inbound message, raising `ProtocolError` with a stable code."""
    try:
        obj: Any = _decode_any.decode(raw)
    except msgspec.DecodeError as exc:
        raise ProtocolError(ErrorCode.INVALID_JSON, f"message is not valid JSON: {exc}") from exc
    if not isinstance(obj, dict):
        raise ProtocolError(ErrorCode.INVALID_MESSAGE, "message must be a JSON object")
    message_type = obj.get("type")
    if not isinstance(message_type, str):
        raise CommandError(
            ErrorCode.INVALID_MESSAGE, "message needs a string field `type`", request_id_of(obj)
        )
    command_class = COMMANDS.get(message_type)
    if command_class is None:
        raise CommandError(
            ErrorCode.UNKNOWN_COMMAND,
            f"unknown message type {message_type[:64]!r}",
            request_id_of(obj),
        )
    try:
        return msgspec.convert(obj, command_class)
    except msgspec.ValidationError as exc:
        raise CommandError(
            ErrorCode.INVALID_MESSAGE, f"invalid {message_type}: {exc}", request_id_of(obj)
        ) from exc


class CommandError(ProtocolError):
    """A `ProtocolError` tied to a request id, so the error reply can name the request."""

    def __init__(self, code: ErrorCode, message: str, request_id: RequestId | None) -> None:
        super().__init__(code, message)
        self.request_id = request_id
