"""Collaboration across real `livepush serve` processes on one Redis: a node killed with
SIGKILL takes its editors out of everyone's collaborator list within the presence TTL, and its
tabs' locks become free for the others (the write lock's end announced once)."""

from __future__ import annotations

import asyncio
import json

import aiohttp

from livepush.auth.tokens import mint_token
from tests.cluster.test_cluster import Watcher, cluster
from tests.conftest import SECRET, redis_url
from tests.integration.process import ServerProcess


class Editor(Watcher):
    """A tab that opened workflow `w`."""

    @classmethod
    async def open(
        cls, http: aiohttp.ClientSession, node: ServerProcess, push_ref: str, user: str
    ) -> Editor:
        token = mint_token(SECRET, user, workflows=["*"])
        ws = await http.ws_connect(f"{node.url}/rest/push?pushRef={push_ref}&token={token}")
        editor = cls(ws)
        await ws.send_str(json.dumps({"type": "workflowOpened", "workflowId": "w"}))
        return editor

    def users(self) -> list[str] | None:
        lists = [m["data"] for m in self.messages if m["type"] == "collaboratorsChanged"]
        return [c["user"]["id"] for c in lists[-1]["collaborators"]] if lists else None


async def test_a_killed_nodes_editors_and_locks_go_within_the_ttl() -> None:
    async with (
        cluster(2, redis_url(), LIVEPUSH_PRESENCE_TTL="3") as (a, b),
        aiohttp.ClientSession() as http,
    ):
        ada = await Editor.open(http, a, "ada-tab", "ada")
        bob = await Editor.open(http, b, "bob-tab", "bob")
        await ada.wait(lambda: ada.users() == ["ada", "bob"])
        await bob.wait(lambda: bob.users() == ["ada", "bob"])
        await bob.ws.send_str(
            json.dumps({"type": "nodeLockRequested", "workflowId": "w", "nodeId": "n1", "id": 1})
        )
        await bob.ws.send_str(json.dumps({"type": "writeAccessRequested", "workflowId": "w"}))
        await ada.wait(lambda: ada.of_type("nodeLocked") and ada.of_type("writeAccessAcquired"))
        # still there after several renewals (longer than the TTL)
        await asyncio.sleep(4.0)
        assert ada.users() == ["ada", "bob"]
        b.kill()
        await bob.closed.wait()
        loop = asyncio.get_running_loop()
        killed = loop.time()
        await ada.wait(lambda: ada.users() == ["ada"])
        # the entry lapses 2.5 s after its last renewal and is polled every 0.25 s; slack for
        # a loaded machine
        assert loop.time() - killed < 6.0
        # the locks ended with their holder's node: the survivor announces them, once
        await ada.wait(lambda: ada.of_type("writeAccessReleased") and ada.of_type("nodeUnlocked"))
        await asyncio.sleep(1.0)
        assert len(ada.of_type("writeAccessReleased")) == 1
        assert [m["data"] for m in ada.of_type("nodeUnlocked")] == [
            {"workflowId": "w", "nodeId": "n1"}
        ]
        # the dead tab's node lock expires with its presence: ada can take it then
        for request in range(2, 100):
            await ada.ws.send_str(
                json.dumps(
                    {"type": "nodeLockRequested", "workflowId": "w", "nodeId": "n1", "id": request}
                )
            )
            await ada.wait(
                lambda request=request: any(m.get("id") == request for m in ada.messages)
            )
            answer = next(m for m in ada.messages if m.get("id") == request)
            if answer["type"] == "reply":
                break
            assert answer["data"]["code"] == "lock_held"
            await asyncio.sleep(0.2)
        assert answer["type"] == "reply"
        assert loop.time() - killed < 6.0
        await ada.close()
