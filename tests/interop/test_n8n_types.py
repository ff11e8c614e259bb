"""What livepush sends an n8n editor type-checks against n8n's own push types: a stream of
every execution event is recorded from a real server and compiled with TypeScript against the
npm package `@n8n/api-types` (JSON on the wire: its `Date` fields are ISO strings)."""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.conftest import NODE_DIR, RunningServer, require_npm
from tests.integration.helpers import receive_json
from tests.protocol.test_execution import SAMPLES

TSC = NODE_DIR / "node_modules" / ".bin" / "tsc"

HEADER = """import type { PushMessage } from '@n8n/api-types';

type Jsonify<T> = T extends Date
  ? string
  : T extends (infer U)[]
    ? Jsonify<U>[]
    : T extends object
      ? { [K in keyof T]: Jsonify<T[K]> }
      : T;
/** n8n's sub-workflow progress events (in n8n's source, not yet in the npm package). */
type Subworkflow =
  | {
      type: 'subworkflowExecutionStarted';
      data: { parentExecutionId: string; parentNodeName: string; executionId: string;
              totalNodes: number };
    }
  | {
      type: 'subworkflowNodeProgress';
      data: { parentExecutionId: string; parentNodeName: string; executionId: string;
              currentNodeName: string; currentNodeIndex: number; totalNodes: number;
              phase: 'running' | 'success' | 'error' };
    }
  | {
      type: 'subworkflowExecutionFinished';
      data: { parentExecutionId: string; parentNodeName: string; executionId: string;
              status: Jsonify<PushMessage & { type: 'executionFinished' }>['data']['status'] };
    };
/** A push message as JSON, plus livepush's own top-level fields (n8n clients ignore them). */
type Wire = (Jsonify<PushMessage> | Subworkflow) & {
  channel?: string;
  offset?: number;
  epoch?: string;
};

export const recorded = """


@pytest.fixture
def tsc() -> Path:
    require_npm("typescript", "@n8n/api-types")
    return TSC


async def _type_check(
    tsc: Path, frames: list[dict[str, Any]], *, extensions: bool = False
) -> tuple[int, str]:
    """tsc's verdict on the frames as n8n's push messages. `extensions`: fields n8n's types
    do not list are allowed (structural typing, as a client reading JSON sees it), the ones
    they list must be there with their types."""
    if extensions:
        tail = (
            " as const;\ntype Frozen<T> = T extends (infer U)[] ? readonly Frozen<U>[]"
            " : T extends object ? { readonly [K in keyof T]: Frozen<T[K]> } : T;\n"
            "export const checked: readonly Frozen<Wire>[] = recorded;\n"
        )
    else:
        tail = " as const satisfies readonly Wire[];\n"
    source = HEADER + json.dumps(frames, indent=1) + tail
    with tempfile.NamedTemporaryFile("w", suffix=".ts", dir=NODE_DIR, delete=False) as file:
        file.write(source)
    try:
        process = await asyncio.create_subprocess_exec(
            str(tsc),
            "--noEmit",
            "--strict",
            "--skipLibCheck",
            "--module",
            "esnext",
            "--moduleResolution",
            "bundler",
            "--target",
            "es2022",
            file.name,
            cwd=NODE_DIR,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        output, _ = await asyncio.wait_for(process.communicate(), 120)
        return int(process.returncode or 0), output.decode()
    finally:
        os.unlink(file.name)


async def test_recorded_execution_stream_type_checks_against_n8n(
    server: RunningServer, http: aiohttp.ClientSession, tsc: Path
) -> None:
    ws = await http.ws_connect(
        server.push_url("editor", server.token(executions=["1"]), channels="execution:1")
    )
    assert (await receive_json(ws))["type"] == "connected"
    # without sequenceNumber: livepush numbers node events itself (n8n's types require it)
    body = {
        "messages": [
            {
                "type": event,
                "data": {k: v for k, v in data.items() if k != "sequenceNumber"},
                "channel": "execution:1",
            }
            for event, data in SAMPLES.items()
        ]
    }
    status, reply = await server.publish(http, body)
    assert status == 200, reply
    frames = [await receive_json(ws) for _ in SAMPLES]
    await ws.close()
    assert [f["type"] for f in frames] == list(SAMPLES)
    numbered = [f for f in frames if f["type"] in ("nodeExecuteBefore", "nodeExecuteAfter")]
    assert [f["data"]["sequenceNumber"] for f in numbered] == [f["offset"] for f in numbered]

    returncode, output = await _type_check(tsc, frames)
    assert returncode == 0, output

    # the check can fail: one wrong value in the same stream is a compile error
    broken = json.loads(json.dumps(frames))
    finished = next(f for f in broken if f["type"] == "executionFinished")
    finished["data"]["status"] = "done"
    returncode, output = await _type_check(tsc, broken)
    assert returncode != 0 and "done" in output


async def test_recorded_collaboration_messages_type_check_against_n8n(
    server: RunningServer, http: aiohttp.ClientSession, tsc: Path
) -> None:
    """What an n8n editor tab receives when two people open a workflow and one takes the
    write lock: n8n's collaboration messages, as n8n's own types have them."""
    from tests.execution.test_executions import Watcher

    profile = {"email": "ada@example.com", "firstName": "Ada", "lastName": "Lovelace"}
    ada = await Watcher.open(http, server, "ada", server.token("ada", profile=profile))
    bob = await Watcher.open(http, server, "bob", server.token("bob"))
    for tab in (ada, bob):
        await tab.ws.send_str(json.dumps({"type": "workflowOpened", "workflowId": "1"}))
    await bob.until(
        lambda: any(
            len(f["data"]["collaborators"]) == 2
            for f in bob.frames
            if f["type"] == "collaboratorsChanged"
        )
    )
    await ada.ws.send_str(json.dumps({"type": "writeAccessRequested", "workflowId": "1"}))
    await bob.until(
        lambda: (
            "writeAccessAcquired" in bob.types("workflow:1")
            and any(
                len(f["data"]["collaborators"]) == 2
                for f in bob.frames
                if f["type"] == "collaboratorsChanged"
            )
        )
    )
    await bob.close()
    await ada.until(
        lambda: (
            [
                len(f["data"]["collaborators"])
                for f in ada.frames
                if f["type"] == "collaboratorsChanged"
            ][-1]
            == 1
        )
    )
    await ada.close()
    frames = [f for f in bob.frames + ada.frames if f["type"] != "connected"]
    assert {f["type"] for f in frames} == {"collaboratorsChanged", "writeAccessAcquired"}
    # livepush adds `tabs` to each collaborator and `fencingToken` to writeAccessAcquired
    returncode, output = await _type_check(tsc, frames, extensions=True)
    assert returncode == 0, output
    # and the check can fail: n8n's MinimalUser needs every field
    broken = json.loads(json.dumps(frames))
    next(f for f in broken if f["type"] == "collaboratorsChanged")["data"]["collaborators"][0][
        "user"
    ].pop("email")
    returncode, output = await _type_check(tsc, broken, extensions=True)
    assert returncode != 0 and "email" in output
