"""The server as a user runs it: `livepush serve` in its own process, `livepush token`,
development defaults, and graceful shutdown on SIGTERM."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys

import aiohttp

from tests.conftest import API_KEY, SECRET
from tests.integration.helpers import SseReader, expect_close, receive_json
from tests.integration.process import serve_process

ENV = {"LIVEPUSH_JWT_SECRET": SECRET, "LIVEPUSH_API_KEY": API_KEY}


def mint(*args: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "livepush.cli", "token", *args],
        capture_output=True,
        text=True,
        check=True,
    )
    return result.stdout.strip()


async def test_new_user_flow_with_generated_development_credentials():
    async with serve_process() as server, aiohttp.ClientSession() as http:
        secret = re.search(r"--secret=(\S+)", server.banner)
        api_key = re.search(r"Authorization: Bearer (\S+)'", server.banner)
        assert secret and api_key, server.banner
        token = mint("--user", "alice", "--workflows", "*", "--secret", secret.group(1))
        base = f"{server.url}/rest/push"
        ws = await http.ws_connect(f"{base}?pushRef=ws1&token={token}&channels=workflow:42")
        assert (await receive_json(ws))["type"] == "connected"
        sse = await http.get(
            f"{base}?pushRef=sse1&channels=workflow:42",
            headers={"Accept": "text/event-stream", "Authorization": f"Bearer {token}"},
        )
        reader = SseReader(sse)
        await reader.message_of_type("connected")
        async with http.post(
            f"{server.url}/api/v1/publish",
            json={"type": "hello", "data": {"text": "hi"}, "channel": "workflow:42"},
            headers={"Authorization": f"Bearer {api_key.group(1)}"},
        ) as response:
            assert response.status == 200
        assert (await receive_json(ws))["data"] == {"text": "hi"}
        assert (await reader.message_of_type("hello"))["data"] == {"text": "hi"}
        await ws.close()
        sse.close()


async def test_sigterm_drains_websocket_with_1012_and_sse_with_disconnect_event():
    env = {**ENV, "LIVEPUSH_SHUTDOWN_TIMEOUT": "5"}
    async with serve_process(env=env) as server, aiohttp.ClientSession() as http:
        token = mint("--user", "alice", "--workflows", "1", "--secret", SECRET)
        ws = await http.ws_connect(
            f"{server.url}/rest/push?pushRef=ws1&token={token}&channels=workflow:1"
        )
        await receive_json(ws)
        sse = await http.get(
            f"{server.url}/rest/push?pushRef=sse1&token={token}&channels=workflow:1",
            headers={"Accept": "text/event-stream"},
        )
        reader = SseReader(sse)
        await reader.message_of_type("connected")
        messages = [{"type": "step", "data": {"i": i}, "channel": "workflow:1"} for i in range(200)]
        async with http.post(
            f"{server.url}/api/v1/publish",
            json={"messages": messages},
            headers={"Authorization": f"Bearer {API_KEY}"},
        ) as response:
            assert response.status == 200
        server.process.terminate()

        received = [(await receive_json(ws))["data"]["i"] for _ in range(200)]
        assert received == list(range(200))
        assert await expect_close(ws) == 1012

        sse_received = [(await reader.message_of_type("step"))["data"]["i"] for _ in range(200)]
        assert sse_received == list(range(200))
        goodbye = await reader.next_message()
        assert goodbye["type"] == "disconnect"
        assert goodbye["data"]["code"] == 1012 and goodbye["data"]["reconnect"] is True

        assert await asyncio.wait_for(server.process.wait(), 10) == 0
        sse.close()


async def test_token_command_prints_a_token_the_server_accepts():
    async with serve_process(env=ENV) as server, aiohttp.ClientSession() as http:
        token = mint("--user", "bob", "--ttl", "60", "--workflows", "5,6", "--secret", SECRET)
        ws = await http.ws_connect(
            f"{server.url}/rest/push?pushRef=t1&token={token}&channels=workflow:5,workflow:6,workflow:7"
        )
        greeting = await receive_json(ws)
        joined = [c["channel"] for c in greeting["data"]["channels"]]
        assert "workflow:5" in joined and "workflow:6" in joined
        assert [r["channel"] for r in greeting["data"]["refused"]] == ["workflow:7"]
        await ws.close()


def test_token_command_without_secret_explains_what_to_do():
    result = subprocess.run(
        [sys.executable, "-m", "livepush.cli", "token", "--user", "bob"],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 2
    assert "--secret" in result.stderr and "LIVEPUSH_JWT_SECRET" in result.stderr


async def test_config_file_environment_and_options_precedence(tmp_path):
    config = tmp_path / "livepush.toml"
    config.write_text('rest_prefix = "/api/push-base"\nhistory_size = 5\n')
    env = {**ENV, "LIVEPUSH_REST_PREFIX": "/from-env"}
    async with (
        serve_process("--config", str(config), env=env) as server,
        aiohttp.ClientSession() as http,
    ):
        token = mint("--user", "u", "--secret", SECRET)
        # The environment beats the file.
        ws = await http.ws_connect(f"{server.url}/from-env/push?pushRef=a&token={token}")
        assert (await receive_json(ws))["type"] == "connected"
        await ws.close()
    async with (
        serve_process("--config", str(config), "--rest-prefix", "/from-cli", env=env) as server,
        aiohttp.ClientSession() as http,
    ):
        ws = await http.ws_connect(f"{server.url}/from-cli/push?pushRef=a&token={token}")
        assert (await receive_json(ws))["type"] == "connected"
        await ws.close()


def test_bad_configuration_is_reported_not_a_traceback(tmp_path):
    config = tmp_path / "bad.toml"
    config.write_text("no_such_setting = 1\n")
    result = subprocess.run(
        [sys.executable, "-m", "livepush.cli", "serve", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert result.returncode == 2
    assert "no_such_setting" in result.stderr and "Traceback" not in result.stderr


def test_printed_token_command_works_even_when_the_secret_starts_with_a_dash():
    """The development banner's command is copied as is; a generated secret starting with
    "-" once made argparse take it for an option (found by CI)."""
    from livepush.config import load_config
    from livepush.server import apply_development_defaults

    config = load_config({}, environ={})
    notes = apply_development_defaults(config)
    command = next(line for line in notes if "livepush token" in line).split()
    assert command[-1].startswith("--secret=")
    command[-1] = "--secret=-starts-with-a-dash-0123456789abcdef"
    result = subprocess.run(
        [sys.executable, "-m", "livepush.cli", *command[1:]], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.count(".") == 2
