"""Locks with fencing tokens, one contract for every engine: grant, renew, takeover by the
same user, expiry, release, stale tokens refused; atomic when two nodes ask at once."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable

import aiohttp
import pytest

from livepush.engines.base import LockStore
from livepush.engines.memory import MemoryLocks
from livepush.engines.redis import RedisLocks
from tests.conftest import API_KEY, RunningServer, redis_url

Nodes = Callable[[], LockStore]


@pytest.fixture(params=["memory", "redis"])
async def nodes(request: pytest.FixtureRequest) -> AsyncIterator[Nodes]:
    """Lock stores of one engine as several nodes see it (memory: one process, one store)."""
    started: list[LockStore] = []
    shared = MemoryLocks()
    prefix = f"lplock-{uuid.uuid4().hex[:8]}"

    def make() -> LockStore:
        if request.param == "memory":
            return shared
        store = RedisLocks(redis_url(), prefix=prefix)
        started.append(store)
        return store

    yield make
    for store in started:
        await store.close()


async def started(store: LockStore) -> LockStore:
    await store.start()
    return store


async def test_grant_renew_refuse_release(nodes: Nodes) -> None:
    locks = await started(nodes())
    granted, grant = await locks.acquire("workflow:1", "tab-a", "alice", 5)
    assert granted and grant.holder == "tab-a" and grant.token >= 1
    token = grant.token
    # the holder renews under the same token
    granted, renewed = await locks.acquire("workflow:1", "tab-a", "alice", 5)
    assert granted and renewed.token == token
    # another user is refused and told who holds it
    granted, current = await locks.acquire("workflow:1", "tab-b", "bob", 5)
    assert not granted and current.holder == "tab-a" and current.owner == "alice"
    assert 0 < current.ttl <= 5
    assert await locks.check("workflow:1", token)
    assert not await locks.check("workflow:1", token + 1)
    # only the holder, with its token, releases
    assert not await locks.release("workflow:1", "tab-b", token)
    assert not await locks.release("workflow:1", "tab-a", token + 1)
    assert await locks.release("workflow:1", "tab-a", token)
    assert await locks.holder("workflow:1") is None
    assert not await locks.check("workflow:1", token)
    # the next grant has a higher token
    granted, again = await locks.acquire("workflow:1", "tab-b", "bob", 5)
    assert granted and again.token > token


async def test_takeover_by_the_same_user_only(nodes: Nodes) -> None:
    locks = await started(nodes())
    _, first = await locks.acquire("workflow:2", "tab-a", "alice", 5)
    granted, _ = await locks.acquire("workflow:2", "tab-b", "bob", 5, takeover=True)
    assert not granted  # another user cannot force it
    granted, second = await locks.acquire("workflow:2", "tab-c", "alice", 5, takeover=True)
    assert granted and second.holder == "tab-c" and second.token > first.token
    # the old tab's token is stale now: a save guarded by it is refused
    assert not await locks.check("workflow:2", first.token)
    assert await locks.check("workflow:2", second.token)
    assert not await locks.release("workflow:2", "tab-a", first.token)


async def test_an_expired_writer_cannot_overwrite_newer_work(nodes: Nodes) -> None:
    locks = await started(nodes())
    _, old = await locks.acquire("node:3:Set", "tab-a", "alice", 0.2)
    await asyncio.sleep(0.35)
    assert not await locks.check("node:3:Set", old.token)  # expired, even with no new holder
    assert await locks.holder("node:3:Set") is None
    granted, new = await locks.acquire("node:3:Set", "tab-b", "bob", 5)
    assert granted and new.token > old.token
    assert not await locks.check("node:3:Set", old.token)
    # renewing after expiry is a new grant, never the old token brought back
    granted, _ = await locks.acquire("node:3:Set", "tab-a", "alice", 5)
    assert not granted


async def test_two_nodes_asking_at_the_same_instant_grant_once(nodes: Nodes) -> None:
    stores = [await started(nodes()) for _ in range(2)]
    attempts = [stores[i % 2].acquire("workflow:4", f"tab-{i}", f"user-{i}", 5) for i in range(40)]
    results = await asyncio.gather(*attempts)
    winners = [grant for granted, grant in results if granted]
    assert len(winners) == 1
    holder = winners[0].holder
    assert all(grant.holder == holder for _, grant in results)


async def test_the_check_endpoint_for_save_handlers(
    server: RunningServer, http: aiohttp.ClientSession
) -> None:
    _, grant = await server.node.engine.locks.acquire("workflow:9", "tab-a", "alice", 30)
    headers = {"Authorization": f"Bearer {API_KEY}"}
    url = f"{server.url}/api/v1/locks/check"
    async with http.post(
        url, json={"lock": "workflow:9", "token": grant.token}, headers=headers
    ) as r:
        body = await r.json()
        assert r.status == 200 and body["valid"] is True
        assert body["current"]["holder"] == "tab-a" and body["current"]["token"] == grant.token
    async with http.post(url, json={"lock": "workflow:9", "token": 0}, headers=headers) as r:
        assert (await r.json())["valid"] is False
    async with http.post(url, json={"lock": "bad name", "token": 1}, headers=headers) as r:
        assert r.status == 400 and (await r.json())["error"]["code"] == "invalid_message"
    async with http.post(url, json={"lock": "workflow:9"}, headers=headers) as r:
        assert r.status == 400 and (await r.json())["error"]["code"] == "bad_request"
    async with http.post(url, json={"lock": "workflow:9", "token": 1}) as r:
        assert r.status == 401
