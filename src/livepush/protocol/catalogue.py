"""The message types livepush knows by name: n8n's push catalogue (`@n8n/api-types`, push/*)
and livepush's own. Publishers may send other types too; these names are what metrics label
by (anything else is counted as `other`, which keeps label cardinality bounded).
"""

from __future__ import annotations

from typing import Final

from livepush.protocol.envelope import RESERVED_TYPES

EXECUTION_TYPES: Final = frozenset(
    {
        "executionStarted",
        "nodeExecuteBefore",
        "nodeExecuteAfter",
        "nodeExecuteAfterData",
        "executionWaiting",
        "executionFinished",
        "executionRecovered",
        "resumeComplete",
        "subworkflowExecutionStarted",
        "subworkflowNodeProgress",
        "subworkflowExecutionFinished",
    }
)

WORKFLOW_TYPES: Final = frozenset(
    {
        "workflowActivated",
        "workflowFailedToActivate",
        "workflowPartiallyActivated",
        "workflowDeactivated",
        "workflowAutoDeactivated",
        "workflowUpdated",
        "workflowSettingsUpdated",
        "workflowMcpAvailabilityChanged",
        "workflowReviewStateChanged",
    }
)

COLLABORATION_TYPES: Final = frozenset(
    {"collaboratorsChanged", "writeAccessAcquired", "writeAccessReleased"}
    | {"collabEphemeral", "nodeLocked", "nodeUnlocked"}  # livepush's own
)

OTHER_N8N_TYPES: Final = frozenset(
    {
        "testWebhookReceived",
        "testWebhookDeleted",
        "sendWorkerStatusMessage",
        "sendConsoleMessage",
        "reloadNodeType",
        "removeNodeType",
        "nodeDescriptionUpdated",
        "updateBuilderCredits",
        "operatorLogs",
        "browserApi",
        "chatHubStreamBegin",
        "chatHubStreamChunk",
        "chatHubStreamEnd",
        "chatHubStreamError",
    }
)

KNOWN_TYPES: Final = (
    EXECUTION_TYPES | WORKFLOW_TYPES | COLLABORATION_TYPES | OTHER_N8N_TYPES | RESERVED_TYPES
)


def metric_label(message_type: str) -> str:
    """The metrics label for a message type: its name if known, else `other`."""
    return message_type if message_type in KNOWN_TYPES else "other"
