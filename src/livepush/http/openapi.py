"""The OpenAPI document of the HTTP API, with request and response schemas generated from the
same msgspec types that validate the requests."""

from __future__ import annotations

from typing import Any

import msgspec

from livepush import __version__
from livepush.http.publish import PublishBatch, PublishBatchResult, PublishMessage, PublishResult


class ErrorDetail(msgspec.Struct):
    """A stable error code and a human-readable message."""

    code: str
    message: str


class ErrorBody(msgspec.Struct):
    """Every HTTP error body."""

    error: ErrorDetail


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def openapi_document(rest_prefix: str) -> dict[str, Any]:
    """Build the document (served at /api/v1/openapi.json)."""
    _, components = msgspec.json.schema_components(
        [PublishMessage, PublishBatch, PublishResult, PublishBatchResult, ErrorBody],
        ref_template="#/components/schemas/{name}",
    )
    error = _json(_ref("ErrorBody"), "error with a stable code")
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "livepush HTTP API",
            "version": __version__,
            "description": "Publishing into livepush channels, health and metrics. The push "
            f"endpoint itself ({rest_prefix}/push) is described in docs/protocol.md.",
        },
        "components": {
            "schemas": components,
            "securitySchemes": {"apiKey": {"type": "http", "scheme": "bearer"}},
        },
        "paths": {
            "/api/v1/publish": {
                "post": {
                    "summary": "Publish one message, or a batch in order",
                    "description": "Each message has exactly one target: channel, pushRef, "
                    "userIds or broadcast. A batch is validated whole before anything is "
                    "published.",
                    "security": [{"apiKey": []}],
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {"oneOf": [_ref("PublishMessage"), _ref("PublishBatch")]}
                            }
                        },
                    },
                    "responses": {
                        "200": _json(
                            {"oneOf": [_ref("PublishResult"), _ref("PublishBatchResult")]},
                            "where each message landed",
                        ),
                        "400": error,
                        "401": error,
                        "413": error,
                        "503": error,
                    },
                }
            },
            "/api/v1/executions/events": {
                "post": {
                    "summary": "Publish execution events (n8n's shapes), one or a batch",
                    "description": "Body: {type, data, pushRef?, workflowId?} or {events: "
                    "[...]}. Each event goes to execution:<id>, is recorded in the execution's "
                    "state and is followed by the tab pushRef and the workflow's watchers "
                    "(docs/protocol.md, Executions). Validated whole before anything is "
                    "published.",
                    "security": [{"apiKey": []}],
                    "responses": {
                        "200": {"description": "{publications: [{channel, offset, epoch}]}"},
                        "400": error,
                        "401": error,
                        "413": error,
                        "503": error,
                    },
                }
            },
            "/api/v1/executions/{executionId}": {
                "get": {
                    "summary": "An execution's snapshot and the stream position it reflects",
                    "description": "API key, or a user token allowed to see the execution "
                    "(its channel or its workflow).",
                    "security": [{"apiKey": []}],
                    "responses": {
                        "200": {"description": "{channel, epoch, offset, snapshot}"},
                        "401": error,
                        "403": error,
                        "404": error,
                    },
                }
            },
            "/api/v1/executions/{executionId}/nodes/{nodeName}/output": {
                "get": {
                    "summary": "A node's stored output (the nodeExecuteAfterData data)",
                    "description": "Optional query executionIndex (default: the node's "
                    "latest run). Authorized like the snapshot.",
                    "security": [{"apiKey": []}],
                    "responses": {
                        "200": {"description": "the output's JSON"},
                        "401": error,
                        "403": error,
                        "404": error,
                    },
                }
            },
            "/api/v1/workflows/{workflowId}/collaborators": {
                "get": {
                    "summary": "Who is editing a workflow, cluster-wide",
                    "description": "As collaboratorsChanged: {workflowId, collaborators: "
                    "[{user, lastSeen, tabs}]}.",
                    "security": [{"apiKey": []}],
                    "responses": {"200": {"description": "the list"}, "400": error, "401": error},
                }
            },
            "/api/v1/locks/check": {
                "post": {
                    "summary": "Whether a fencing token is a lock's current one",
                    "description": "Body {lock, token}. For save handlers guarded by a lock: "
                    "valid only while the token is the current token of an unexpired lock.",
                    "security": [{"apiKey": []}],
                    "responses": {
                        "200": {"description": "{lock, valid, current}"},
                        "400": error,
                        "401": error,
                    },
                }
            },
            "/api/v1/saves/resolve": {
                "post": {
                    "summary": "What a save endpoint stores: versions compared, "
                    "last-write-wins per property",
                    "description": "Body {stored, storedVersion, incoming, baseVersion, base?, "
                    "policy? (last_write_wins | reject), lock?, token?}. 200 {status: saved | "
                    "merged, document, versionId, overwritten?}; 409 {status: conflict, code: "
                    "version_conflict | lock_lost, message, conflicts?}.",
                    "security": [{"apiKey": []}],
                    "responses": {
                        "200": {"description": "{status, document, versionId, overwritten?}"},
                        "400": error,
                        "401": error,
                        "409": {"description": "{status: conflict, code, message, conflicts?}"},
                    },
                }
            },
            "/healthz": {
                "get": {
                    "summary": "Process is alive",
                    "responses": {"200": {"description": "alive"}},
                }
            },
            "/readyz": {
                "get": {
                    "summary": "Ready for connections",
                    "responses": {
                        "200": {"description": "ready"},
                        "503": {"description": "draining or engine down"},
                    },
                }
            },
            "/metrics": {
                "get": {
                    "summary": "Prometheus metrics",
                    "responses": {"200": {"description": "text exposition"}},
                }
            },
        },
    }
