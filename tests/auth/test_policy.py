"""Per-channel authorization: token claims, and the host application's HTTP callback."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web

from livepush.auth.policy import ClaimsPolicy, HttpCallbackPolicy
from livepush.auth.tokens import Grants, Identity
from livepush.protocol.errors import ErrorCode, ProtocolError


def _identity(user_id: str = "alice", **claims: Any) -> Identity:
    return Identity(user_id, None, Grants.from_claims(claims))


# -- ClaimsPolicy --------------------------------------------------------------------------------


async def test_claims_policy_allows_system_channel_to_everyone() -> None:
    assert await ClaimsPolicy().can_subscribe(_identity(), "system", "")


async def test_claims_policy_allows_own_user_channel_only() -> None:
    policy = ClaimsPolicy()
    assert await policy.can_subscribe(_identity("alice"), "user", "alice")
    assert not await policy.can_subscribe(_identity("alice"), "user", "bob")


async def test_claims_policy_allows_granted_ids_and_refuses_others() -> None:
    policy = ClaimsPolicy()
    identity = _identity(workflows=["w1"], executions=["e1"], projects=["p1"])
    assert await policy.can_subscribe(identity, "workflow", "w1")
    assert await policy.can_subscribe(identity, "execution", "e1")
    assert await policy.can_subscribe(identity, "project", "p1")
    assert not await policy.can_subscribe(identity, "workflow", "w2")
    assert not await policy.can_subscribe(identity, "execution", "e2")
    assert not await policy.can_subscribe(identity, "project", "p2")


async def test_claims_policy_wildcard_grants_a_whole_kind() -> None:
    policy = ClaimsPolicy()
    identity = _identity(workflows=["*"])
    assert await policy.can_subscribe(identity, "workflow", "anything")
    assert not await policy.can_subscribe(identity, "execution", "anything")


async def test_claims_policy_admin_may_subscribe_anywhere() -> None:
    policy = ClaimsPolicy()
    identity = _identity(admin=True)
    assert await policy.can_subscribe(identity, "workflow", "w")
    assert await policy.can_subscribe(identity, "user", "bob")


async def test_claims_policy_with_no_grants_refuses_granted_kinds() -> None:
    policy = ClaimsPolicy()
    assert not await policy.can_subscribe(_identity(), "workflow", "w1")
    await policy.close()


# -- HttpCallbackPolicy against a real HTTP server ---------------------------------------------


@dataclass
class CallbackServer:
    """The host application's authorization endpoint, recording every request."""

    url: str = ""
    requests: list[dict[str, Any]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    allowed: set[tuple[str, str]] = field(default_factory=set)
    status: int = 200
    body: Any = None
    delay: float = 0.0
    release: asyncio.Event = field(default_factory=asyncio.Event)
    gate: bool = False

    async def handle(self, request: web.Request) -> web.Response:
        self.requests.append(await request.json())
        self.headers.append(dict(request.headers))
        if self.gate:
            await self.release.wait()
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.status != 200:
            return web.json_response({"error": "nope"}, status=self.status)
        if self.body is not None:
            return web.Response(body=self.body, content_type="application/json")
        asked = self.requests[-1]
        return web.json_response({"allow": (asked["userId"], asked["channel"]) in self.allowed})


@pytest.fixture
async def callback_server() -> AsyncIterator[CallbackServer]:
    server = CallbackServer()
    app = web.Application()
    app.router.add_post("/authorize", server.handle)
    runner = web.AppRunner(app, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    server.url = f"http://127.0.0.1:{port}/authorize"
    yield server
    server.release.set()
    await runner.cleanup()


@pytest.fixture
async def policy(callback_server: CallbackServer) -> AsyncIterator[HttpCallbackPolicy]:
    policy = HttpCallbackPolicy(callback_server.url, cache_ttl=30.0, timeout=2.0)
    yield policy
    await policy.close()


async def test_claims_grant_short_circuits_the_callback(
    policy: HttpCallbackPolicy, callback_server: CallbackServer
) -> None:
    identity = _identity(workflows=["w1"])
    assert await policy.can_subscribe(identity, "workflow", "w1")
    assert await policy.can_subscribe(identity, "system", "")
    assert await policy.can_subscribe(identity, "user", "alice")
    assert callback_server.requests == []
    assert policy.calls == 0


async def test_read_only_claim_grants_reading_but_not_writing() -> None:
    policy = ClaimsPolicy()
    reader = _identity(workflows=["w1", "w2"], readOnly=["w1", "project:p1"])
    assert await policy.can_subscribe(reader, "workflow", "w1")
    assert not await policy.can_write(reader, "workflow", "w1")
    assert await policy.can_write(reader, "workflow", "w2")
    assert not await policy.can_write(reader, "workflow", "w3")  # not granted at all
    everything = _identity(admin=True, readOnly=True)
    assert await policy.can_subscribe(everything, "workflow", "any")
    assert not await policy.can_write(everything, "workflow", "any")
    assert not await policy.can_write(everything, "project", "p9")


async def test_callback_is_asked_about_writing_separately(
    policy: HttpCallbackPolicy, callback_server: CallbackServer
) -> None:
    callback_server.allowed.add(("alice", "workflow:w7"))
    assert await policy.can_write(_identity(), "workflow", "w7")
    assert await policy.can_subscribe(_identity(), "workflow", "w7")
    assert callback_server.requests == [
        {"userId": "alice", "channel": "workflow:w7", "access": "write"},
        {"userId": "alice", "channel": "workflow:w7", "access": "read"},
    ]
    # a token that marks the channel read-only is not overridden by the callback
    assert not await policy.can_write(_identity(readOnly=["w7"]), "workflow", "w7")
    assert len(callback_server.requests) == 2
    # claims that grant writing skip the callback
    assert await policy.can_write(_identity(workflows=["w8"]), "workflow", "w8")
    assert len(callback_server.requests) == 2


async def test_callback_allow_grants_the_channel(
    policy: HttpCallbackPolicy, callback_server: CallbackServer
) -> None:
    callback_server.allowed.add(("alice", "workflow:w7"))
    assert await policy.can_subscribe(_identity(), "workflow", "w7")
    assert callback_server.requests == [
        {"userId": "alice", "channel": "workflow:w7", "access": "read"}
    ]


async def test_callback_deny_refuses_the_channel(
    policy: HttpCallbackPolicy, callback_server: CallbackServer
) -> None:
    assert not await policy.can_subscribe(_identity(), "execution", "e1")
    assert callback_server.requests == [
        {"userId": "alice", "channel": "execution:e1", "access": "read"}
    ]


async def test_callback_answer_other_than_true_denies(
    policy: HttpCallbackPolicy, callback_server: CallbackServer
) -> None:
    for body in (b'{"allow": "yes"}', b'{"allow": 1}', b"[true]", b"true"):
        callback_server.body = body
        assert not await policy.can_subscribe(_identity(body.decode()), "workflow", "w1")


async def test_callback_answers_are_cached(
    policy: HttpCallbackPolicy, callback_server: CallbackServer
) -> None:
    callback_server.allowed.add(("alice", "workflow:w1"))
    assert await policy.can_subscribe(_identity(), "workflow", "w1")
    assert not await policy.can_subscribe(_identity(), "workflow", "w2")
    assert len(callback_server.requests) == 2
    # Same questions again: answered from the cache, even if the host changed its mind.
    callback_server.allowed.clear()
    assert await policy.can_subscribe(_identity(), "workflow", "w1")
    assert not await policy.can_subscribe(_identity(), "workflow", "w2")
    assert len(callback_server.requests) == 2
    assert policy.calls == 2


async def test_cache_is_per_user_and_channel(
    policy: HttpCallbackPolicy, callback_server: CallbackServer
) -> None:
    callback_server.allowed.add(("alice", "workflow:w1"))
    assert await policy.can_subscribe(_identity("alice"), "workflow", "w1")
    assert not await policy.can_subscribe(_identity("bob"), "workflow", "w1")
    assert not await policy.can_subscribe(_identity("alice"), "project", "w1")
    assert len(callback_server.requests) == 3


async def test_cached_answer_expires_after_cache_ttl(callback_server: CallbackServer) -> None:
    policy = HttpCallbackPolicy(callback_server.url, cache_ttl=0.05)
    try:
        assert not await policy.can_subscribe(_identity(), "workflow", "w1")
        callback_server.allowed.add(("alice", "workflow:w1"))
        await asyncio.sleep(0.1)
        assert await policy.can_subscribe(_identity(), "workflow", "w1")
        assert len(callback_server.requests) == 2
    finally:
        await policy.close()


async def test_concurrent_identical_questions_make_one_http_call(
    policy: HttpCallbackPolicy, callback_server: CallbackServer
) -> None:
    callback_server.allowed.add(("alice", "workflow:w1"))
    callback_server.delay = 0.05
    answers = await asyncio.gather(
        *(policy.can_subscribe(_identity(), "workflow", "w1") for _ in range(10))
    )
    assert answers == [True] * 10
    assert len(callback_server.requests) == 1
    assert policy.calls == 1


async def test_concurrent_different_questions_are_not_coalesced(
    policy: HttpCallbackPolicy, callback_server: CallbackServer
) -> None:
    callback_server.delay = 0.02
    await asyncio.gather(
        *(policy.can_subscribe(_identity(), "workflow", f"w{i}") for i in range(5))
    )
    assert sorted(r["channel"] for r in callback_server.requests) == [
        f"workflow:w{i}" for i in range(5)
    ]


async def test_api_key_sent_as_bearer_token(callback_server: CallbackServer) -> None:
    policy = HttpCallbackPolicy(callback_server.url, api_key="k-123")
    try:
        await policy.can_subscribe(_identity(), "workflow", "w1")
    finally:
        await policy.close()
    assert callback_server.headers[0]["Authorization"] == "Bearer k-123"


async def test_no_authorization_header_without_api_key(
    policy: HttpCallbackPolicy, callback_server: CallbackServer
) -> None:
    await policy.can_subscribe(_identity(), "workflow", "w1")
    assert "Authorization" not in callback_server.headers[0]


@pytest.mark.parametrize("status", [403, 404, 500, 503])
async def test_non_200_answer_fails_closed_as_authorization_unavailable(
    policy: HttpCallbackPolicy, callback_server: CallbackServer, status: int
) -> None:
    callback_server.status = status
    with pytest.raises(ProtocolError) as info:
        await policy.can_subscribe(_identity(), "workflow", "w1")
    assert info.value.code is ErrorCode.AUTHORIZATION_UNAVAILABLE
    assert str(status) in info.value.message


async def test_failures_are_not_cached(
    policy: HttpCallbackPolicy, callback_server: CallbackServer
) -> None:
    callback_server.status = 500
    with pytest.raises(ProtocolError):
        await policy.can_subscribe(_identity(), "workflow", "w1")
    callback_server.status = 200
    callback_server.allowed.add(("alice", "workflow:w1"))
    assert await policy.can_subscribe(_identity(), "workflow", "w1")
    assert len(callback_server.requests) == 2


async def test_invalid_json_answer_fails_closed(
    policy: HttpCallbackPolicy, callback_server: CallbackServer
) -> None:
    callback_server.body = b"{not json"
    with pytest.raises(ProtocolError) as info:
        await policy.can_subscribe(_identity(), "workflow", "w1")
    assert info.value.code is ErrorCode.AUTHORIZATION_UNAVAILABLE


async def test_concurrent_askers_share_a_failure(
    policy: HttpCallbackPolicy, callback_server: CallbackServer
) -> None:
    callback_server.status = 502
    callback_server.delay = 0.05
    results = await asyncio.gather(
        *(policy.can_subscribe(_identity(), "workflow", "w1") for _ in range(5)),
        return_exceptions=True,
    )
    assert len(callback_server.requests) == 1
    for result in results:
        assert isinstance(result, ProtocolError)
        assert result.code is ErrorCode.AUTHORIZATION_UNAVAILABLE


async def test_slow_callback_times_out_as_authorization_unavailable(
    callback_server: CallbackServer,
) -> None:
    callback_server.delay = 0.3
    policy = HttpCallbackPolicy(callback_server.url, timeout=0.05)
    try:
        with pytest.raises(ProtocolError) as info:
            await policy.can_subscribe(_identity(), "workflow", "w1")
        assert info.value.code is ErrorCode.AUTHORIZATION_UNAVAILABLE
    finally:
        await policy.close()


def _unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def test_unreachable_callback_fails_closed_as_authorization_unavailable() -> None:
    policy = HttpCallbackPolicy(f"http://127.0.0.1:{_unused_port()}/authorize", timeout=1.0)
    try:
        with pytest.raises(ProtocolError) as info:
            await policy.can_subscribe(_identity(), "workflow", "w1")
        assert info.value.code is ErrorCode.AUTHORIZATION_UNAVAILABLE
    finally:
        await policy.close()


async def test_close_is_idempotent_and_policy_reopens_a_session(
    callback_server: CallbackServer,
) -> None:
    policy = HttpCallbackPolicy(callback_server.url)
    await policy.close()
    assert not await policy.can_subscribe(_identity(), "workflow", "w1")
    await policy.close()
    await policy.close()
    assert not await policy.can_subscribe(_identity(), "workflow", "w1")
    await policy.close()


async def test_cancelling_first_asker_does_not_strand_concurrent_askers(
    policy: HttpCallbackPolicy, callback_server: CallbackServer
) -> None:
    callback_server.gate = True
    first = asyncio.create_task(policy.can_subscribe(_identity(), "workflow", "w1"))
    for _ in range(50):
        if callback_server.requests:
            break
        await asyncio.sleep(0.005)
    second = asyncio.create_task(policy.can_subscribe(_identity(), "workflow", "w1"))
    await asyncio.sleep(0.01)
    first.cancel()
    callback_server.release.set()
    done, _ = await asyncio.wait({second}, timeout=0.4)
    if second not in done:
        second.cancel()
    assert second in done
