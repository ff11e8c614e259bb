"""Saving non-CRDT fields: versions compared, last-write-wins per property, clear conflicts
(the pure helper, and the HTTP endpoint against a real server with a real fencing token)."""

from __future__ import annotations

import json
from typing import Any

import aiohttp

from livepush.collab.save import resolve_save
from tests.conftest import API_KEY, RunningServer
from tests.execution.test_executions import Watcher

BASE: dict[str, Any] = {
    "name": "Onboarding",
    "settings": {"timezone": "UTC", "saveManualExecutions": True},
    "nodes": [
        {"id": "a", "name": "Start", "position": [0, 0]},
        {"id": "b", "name": "Set", "position": [200, 0]},
    ],
    "tags": ["x"],
}


def edit(document: dict[str, Any], **changes: Any) -> dict[str, Any]:
    copy = json.loads(json.dumps(document))
    copy.update(changes)
    return copy


def test_the_writer_saw_the_stored_version() -> None:
    incoming = edit(BASE, name="Renamed")
    result = resolve_save(
        stored=BASE, stored_version="v1", incoming=incoming, base_version="v1", new_version="v2"
    )
    assert (result.status, result.document, result.version) == ("saved", incoming, "v2")
    assert result.describe() == {"status": "saved", "document": incoming, "versionId": "v2"}


def test_someone_saved_in_between_without_a_base_is_a_conflict() -> None:
    result = resolve_save(
        stored=edit(BASE, name="Theirs"),
        stored_version="v2",
        incoming=edit(BASE, name="Mine"),
        base_version="v1",
    )
    assert result.status == "conflict" and result.document is None
    assert result.code == "version_conflict"
    assert "'v2'" in result.message and "reload" in result.message


def test_disjoint_changes_merge_per_property() -> None:
    theirs = edit(BASE, name="Theirs", tags=["x", "y"])
    theirs["settings"]["timezone"] = "Europe/Berlin"
    theirs["nodes"][1]["position"] = [300, 50]  # moved Set
    theirs["nodes"].append({"id": "c", "name": "HTTP", "position": [400, 0]})  # added
    mine = edit(BASE)
    mine["settings"]["saveManualExecutions"] = False
    mine["nodes"][0]["name"] = "Trigger"  # renamed Start
    mine["nodes"].append({"id": "d", "name": "Code", "position": [0, 200]})  # added
    result = resolve_save(
        stored=theirs, stored_version="v2", incoming=mine, base_version="v1", base=BASE
    )
    assert result.status == "merged" and not result.overlaps
    assert result.document == {
        "name": "Theirs",
        "settings": {"timezone": "Europe/Berlin", "saveManualExecutions": False},
        "nodes": [
            {"id": "a", "name": "Trigger", "position": [0, 0]},
            {"id": "b", "name": "Set", "position": [300, 50]},
            {"id": "c", "name": "HTTP", "position": [400, 0]},
            {"id": "d", "name": "Code", "position": [0, 200]},
        ],
        "tags": ["x", "y"],
    }


def test_deletions_merge_too() -> None:
    theirs = edit(BASE)
    del theirs["tags"]
    mine = edit(BASE)
    mine["nodes"] = [n for n in mine["nodes"] if n["id"] != "b"]
    result = resolve_save(
        stored=theirs, stored_version="v2", incoming=mine, base_version="v1", base=BASE
    )
    assert result.status == "merged"
    assert result.document is not None
    assert "tags" not in result.document
    assert [n["id"] for n in result.document["nodes"]] == ["a"]


def test_the_same_property_changed_twice_last_write_wins_and_is_reported() -> None:
    theirs = edit(BASE, name="Theirs")
    theirs["nodes"][1]["position"] = [300, 50]
    mine = edit(BASE, name="Mine")
    mine["nodes"][1]["position"] = [999, 999]
    result = resolve_save(
        stored=theirs, stored_version="v2", incoming=mine, base_version="v1", base=BASE
    )
    assert result.status == "merged" and result.document is not None
    assert result.document["name"] == "Mine"
    assert result.document["nodes"][1]["position"] == [999, 999]
    described = result.describe()["overwritten"]
    assert described == [
        {"path": ["name"], "base": "Onboarding", "stored": "Theirs", "incoming": "Mine"},
        {
            "path": ["nodes", "b", "position"],
            "base": [200, 0],
            "stored": [300, 50],
            "incoming": [999, 999],
        },
    ]
    # the same save under the reject policy is a conflict naming both properties
    refused = resolve_save(
        stored=theirs,
        stored_version="v2",
        incoming=mine,
        base_version="v1",
        base=BASE,
        policy="reject",
    )
    assert refused.status == "conflict" and refused.code == "version_conflict"
    assert "name, nodes.b.position" in refused.message
    assert len(refused.describe()["conflicts"]) == 2


async def test_save_endpoint_with_a_fencing_token(
    server: RunningServer, http: aiohttp.ClientSession
) -> None:
    tab = await Watcher.open(http, server, "tab", server.token(), channels="workflow:1")
    granted = await tab.command({"type": "writeAccessRequested", "workflowId": "1", "id": 1})
    token = granted["data"]["fencingToken"]

    async def resolve(body: dict[str, Any], key: str = API_KEY) -> tuple[int, Any]:
        async with http.post(
            f"{server.url}/api/v1/saves/resolve",
            json=body,
            headers={"Authorization": f"Bearer {key}"},
        ) as response:
            return response.status, await response.json()

    theirs = edit(BASE, name="Theirs")
    mine = edit(BASE, tags=["z"])
    request = {
        "stored": theirs,
        "storedVersion": "v2",
        "incoming": mine,
        "baseVersion": "v1",
        "base": BASE,
        "lock": "workflow:1",
        "token": token,
    }
    status, body = await resolve(request)
    assert status == 200 and body["status"] == "merged"
    assert body["document"]["name"] == "Theirs" and body["document"]["tags"] == ["z"]
    assert isinstance(body["versionId"], str) and body["versionId"] not in ("v1", "v2")
    # a stale writer (its lock was released, then taken again with a newer token) is refused
    await tab.command({"type": "writeAccessReleaseRequested", "workflowId": "1", "id": 2})
    await tab.command({"type": "writeAccessRequested", "workflowId": "1", "id": 3})
    status, body = await resolve(request)
    assert status == 409 and body["code"] == "lock_lost"
    # no base and another version: a conflict
    status, body = await resolve({**request, "base": None, "lock": None, "token": None})
    assert status == 409 and body["code"] == "version_conflict"
    # bad requests and keys
    status, body = await resolve({"stored": {}})
    assert status == 400 and body["error"]["code"] == "bad_request"
    status, body = await resolve({**request, "token": None})
    assert status == 400
    status, _ = await resolve(request, key="wrong")
    assert status == 401
    await tab.close()
