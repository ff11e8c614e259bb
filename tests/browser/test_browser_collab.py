"""Two people editing one workflow in real browsers (Debian's Chromium, driven by Playwright):
the canvas through stock yjs + y-websocket on livepush's CRDT endpoint, presence, cursors and
the write lock through n8n's push messages. Each person has a browser context of their own
(separate storage, separate BroadcastChannel), and the providers have BroadcastChannel off,
so everything they share goes through livepush."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from tests.conftest import NODE_DIR, RunningServer, ServerFactory, missing, require_npm

pytestmark = pytest.mark.timeout(90)

HERE = Path(__file__).parent
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def chromium_path() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        missing("chromium is not installed (apt-get install -y chromium)")
    return path


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """editor.mjs with yjs and y-websocket, bundled for the browser by esbuild."""
    require_npm("esbuild", "yjs", "y-websocket")
    out = tmp_path_factory.mktemp("browser") / "editor.js"
    subprocess.run(
        [
            str(NODE_DIR / "node_modules" / ".bin" / "esbuild"),
            str(HERE / "editor.mjs"),
            "--bundle",
            "--format=iife",
            f"--outfile={out}",
            "--log-level=warning",
        ],
        # the packages come from tests/interop/node/node_modules
        env={**os.environ, "NODE_PATH": str(NODE_DIR / "node_modules")},
        check=True,
        timeout=60,
    )
    return out


@pytest.fixture
async def page_server(bundle: Path) -> AsyncIterator[str]:
    """The editor page, served from an origin of its own (as a host application would)."""
    app = web.Application()

    async def index(request: web.Request) -> web.Response:
        html = '<!doctype html><meta charset="utf-8"><script src="/editor.js"></script>'
        return web.Response(text=html, content_type="text/html")

    async def script(request: web.Request) -> web.FileResponse:
        return web.FileResponse(bundle)

    app.router.add_get("/", index)
    app.router.add_get("/editor.js", script)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    await runner.cleanup()


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    try:
        from playwright.async_api import async_playwright
    except ImportError:
        missing("the playwright package is not installed (pip install -e '.[dev]')")
    path = chromium_path()
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=path, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            await browser.close()


async def until(page: Any, expression: str, timeout: float = 15.0) -> Any:
    """Wait until a JavaScript expression on the page is truthy; returns its value."""
    handle = await page.wait_for_function(expression, timeout=timeout * 1000)
    return await handle.json_value()


async def open_editor(
    browser: Any, page_url: str, server: RunningServer, user: str, push_ref: str, **claims: Any
) -> Any:
    context = await browser.new_context()
    page = await context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    await page.goto(page_url)
    profile = {"firstName": user.title(), "lastName": "Tester", "email": f"{user}@example.com"}
    await page.evaluate(
        "o => window.startEditor(o)",
        {
            "server": server.url,
            "token": server.token(user, profile=profile, **claims),
            "workflowId": "1",
            "pushRef": push_ref,
        },
    )
    await until(page, "window.editor.synced")
    page.errors = errors
    return page


async def test_two_people_edit_one_canvas_in_real_browsers(
    server_factory: ServerFactory, page_server: str, browser: Any, tmp_path: Path
) -> None:
    server = await server_factory(
        allowed_origins=[page_server], crdt_path=str(tmp_path / "docs.sqlite3")
    )
    ada = await open_editor(browser, page_server, server, "ada", "adatab0001")
    bob = await open_editor(browser, page_server, server, "bob", "bobtab0001")

    # presence: both see both (n8n's collaboratorsChanged, with the profile from the token)
    for page in (ada, bob):
        await until(page, 'JSON.stringify(window.editor.collaborators()) === \'["ada","bob"]\'')
    users = await bob.evaluate(
        "window.editor.pushed.filter(m => m.type === 'collaboratorsChanged').pop()"
        ".data.collaborators.map(c => c.user)"
    )
    assert users[0] == {
        "id": "ada",
        "email": "ada@example.com",
        "firstName": "Ada",
        "lastName": "Tester",
    }

    # the canvas: moves of different nodes merge; a later move of the same node wins
    await ada.evaluate("window.editor.moveNode('start', 10, 20)")
    await bob.evaluate("window.editor.moveNode('http', 300, 40)")
    await until(ada, "window.editor.canvas().http?.x === 300")
    await ada.evaluate("window.editor.moveNode('http', 310, 45)")
    expected = {"start": {"x": 10, "y": 20}, "http": {"x": 310, "y": 45}}
    for page in (ada, bob):
        await until(page, f"window.sameCanvas(window.editor.canvas(), {json.dumps(expected)})")

    # cursors: bob moves his, ada sees the latest position
    for x in range(50):
        await bob.evaluate(f"window.editor.moveCursor({x}, 7)")
    await until(ada, "window.editor.cursorsOf('bobtab0001').some(c => c.x === 49)")

    # the write lock: ada takes it, bob is told who holds it
    await ada.evaluate("window.editor.send({type: 'writeAccessRequested', workflowId: '1'})")
    acquired = await until(
        bob, "window.editor.pushed.find(m => m.type === 'writeAccessAcquired')?.data"
    )
    assert acquired["userId"] == "ada" and acquired["clientId"] == "adatab0001"

    # ada closes her tab: bob sees her leave and the lock released; the canvas is stored
    await ada.evaluate("window.editor.close()")
    await ada.context.close()
    await until(bob, "JSON.stringify(window.editor.collaborators()) === '[\"bob\"]'")
    await until(bob, "window.editor.types().includes('writeAccessReleased')")
    assert not ada.errors and not bob.errors
    await bob.evaluate("window.editor.close()")
    await bob.context.close()

    # a fresh browser finds the canvas as it was left
    carol = await open_editor(browser, page_server, server, "carol", "caroltab01")
    canvas = await until(
        carol, "Object.keys(window.editor.canvas()).length === 2 && window.editor.canvas()"
    )
    assert canvas == expected
    await carol.evaluate("window.editor.close()")
    await carol.context.close()
    await asyncio.sleep(0)
