"""The execution tests run against both engines: the in-process one and Redis (where state,
stream and outputs live in Redis and are updated by the Lua publish script)."""

from __future__ import annotations

import uuid

import pytest

from tests.conftest import RunningServer, ServerFactory, redis_url


@pytest.fixture(params=["memory", "redis"])
def engine(request: pytest.FixtureRequest) -> dict[str, str]:
    if request.param == "memory":
        return {}
    return {
        "engine": "redis",
        "redis_url": redis_url(),
        "redis_prefix": f"lpexec-{uuid.uuid4().hex[:8]}",
    }


@pytest.fixture
async def server(server_factory: ServerFactory, engine: dict[str, str]) -> RunningServer:
    return await server_factory(**engine)
