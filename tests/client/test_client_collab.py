"""The Python client in a collaboration room, against a real server: it sees who is there,
sends cursors, takes locks, and after a cut it is back in the room by itself."""

from __future__ import annotations

import random
from typing import Any

import pytest

from livepush.client import Client, CommandError, Message
from tests.client.proxies import tcp_proxy
from tests.client.support import eventually
from tests.conftest import ServerFactory

pytestmark = pytest.mark.timeout(30)


def collaborators(messages: list[Message]) -> list[str] | None:
    lists = [m.data for m in messages if m.type == "collaboratorsChanged"]
    return [c["user"]["id"] for c in lists[-1]["collaborators"]] if lists else None


@pytest.mark.parametrize("transport", ["websocket", "sse"])
async def test_room_cursor_locks_and_rejoin_after_a_cut(
    server_factory: ServerFactory, transport: Any
) -> None:
    server = await server_factory()
    async with tcp_proxy(server.url) as proxy:
        ada = Client(
            proxy.url,
            token=server.token("ada"),
            transport=transport,
            backoff_base=0.01,
            backoff_cap=0.05,
            rng=random.Random(1),
        )
        bob = Client(server.url, token=server.token("bob"))
        seen: dict[str, list[Message]] = {"ada": [], "bob": []}
        for name, client in (("ada", ada), ("bob", bob)):
            client.on("collaboratorsChanged", seen[name].append)
            client.on("collabEphemeral", seen[name].append)
            await client.connect()
        await ada.open_workflow("1", state={"status": "active"})
        await bob.open_workflow("1")
        assert ada.rooms == ["1"] and "workflow:1" in ada.channels
        await eventually(lambda: collaborators(seen["ada"]) == ["ada", "bob"])
        await eventually(lambda: collaborators(seen["bob"]) == ["ada", "bob"])

        ada.send_ephemeral("1", "cursor", {"x": 5, "y": 7})

        def cursors() -> list[Any]:
            return [
                u["data"]
                for m in seen["bob"]
                if m.type == "collabEphemeral"
                for u in m.data["updates"]
                if u["clientId"] == ada.push_ref
            ]

        await eventually(lambda: cursors() == [{"x": 5, "y": 7}])
        granted = await ada.request_write_access("1")
        assert isinstance(granted["fencingToken"], int)
        with pytest.raises(CommandError) as refused:
            await bob.request_write_access("1")
        assert refused.value.code == "lock_held"
        assert (await bob.lock_node("1", "n1"))["nodeId"] == "n1"

        # a cut: the server drops ada's tab (and its lock) and bob sees her go; the client
        # reconnects (after its backoff) and rejoins the room by itself
        connections = ada.stats.connections
        proxy.refuse = True
        proxy.cut()
        await eventually(lambda: collaborators(seen["bob"]) == ["bob"], timeout=10)
        proxy.refuse = False
        await eventually(lambda: ada.stats.connections > connections, timeout=10)
        await eventually(lambda: collaborators(seen["bob"]) == ["ada", "bob"], timeout=10)
        latest = [m.data for m in seen["bob"] if m.type == "collaboratorsChanged"][-1]
        ada_tabs = next(c["tabs"] for c in latest["collaborators"] if c["user"]["id"] == "ada")
        assert ada_tabs[0]["state"] == {"status": "active"}
        # the lock went with the old connection: bob may take it now
        assert isinstance((await bob.request_write_access("1"))["fencingToken"], int)

        await ada.close_workflow("1")
        assert ada.rooms == [] and "workflow:1" not in ada.channels
        await eventually(lambda: collaborators(seen["bob"]) == ["bob"])
        await ada.close()
        await bob.close()
