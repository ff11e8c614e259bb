"""Smoke test of the benchmark harness (not a benchmark): ``pytest bench/test_smoke.py``.

Runs ``bench/run.py --quick`` (200 subscribers, 500 idle connections, one repetition; about
40 s) against every server that can start here, and checks that every message published was
received by every subscriber and that every number the report needs is present.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

BENCH = Path(__file__).resolve().parent


def redis_running() -> bool:
    """Whether a Redis answers on 127.0.0.1:6379 (in CI it must: a failure otherwise)."""
    import socket

    try:
        socket.create_connection(("127.0.0.1", 6379), timeout=1).close()
    except OSError:
        if os.environ.get("CI") == "true":
            pytest.fail("no Redis on 127.0.0.1:6379 (CI must start one)")
        return False
    return True


def run_quick(script: str, args: list[str], out: Path, timeout: float) -> dict[str, Any]:
    """Run ``bench/<script> --quick <args>`` (unpinned where taskset is missing), require
    success, and return the JSON it wrote."""
    cmd = [sys.executable, str(BENCH / script), "--quick", *args]
    if shutil.which("taskset") is None:
        cmd.append("--no-pin")
    proc = subprocess.run(
        [*cmd, "--out", str(out)], capture_output=True, text=True, timeout=timeout, check=False
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    result: dict[str, Any] = json.loads(out.read_text())
    return result


@pytest.mark.timeout(600)
def test_quick_run(tmp_path: Path) -> None:
    for tool in ("gcc", "taskset", "node", "npm"):
        if shutil.which(tool) is None:
            # In CI a missing tool is a failure, never a silent skip.
            if os.environ.get("CI") == "true":
                pytest.fail(f"{tool} is not installed (CI must install it)")
            pytest.skip(f"{tool} is not installed")
    servers = ["livepush", "socketio", "aiohttp-bare"]
    if shutil.which("node") and shutil.which("npm"):
        servers.insert(0, "node-ws")
    out = tmp_path / "quick.json"
    cmd = [sys.executable, str(BENCH / "run.py"), "--quick", "--servers", ",".join(servers)]
    proc = subprocess.run(
        [*cmd, "--out", str(out)], capture_output=True, text=True, timeout=540, check=False
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    res = json.loads(out.read_text())
    ran = {c["server"] for c in res["fanout"]}
    assert ran == set(servers) - set(res["skipped"])
    assert "livepush" in ran, res["skipped"]
    for case in res["fanout"]:
        assert case["connected"] == 200, case
        assert case["summary"]["delivered_msgs_per_s"] > 0
        for r in case["saturation"] + case["latency"]:
            assert r["received"] == r["expected"], r
            assert r["lat_p99_ms"] >= r["lat_p50_ms"] > 0
    for cal in res["calibration"]:
        assert cal["summary"]["delivered_msgs_per_s"] > 0
    for m in res["memory"]:
        assert m["still_open"] == 500, m
        assert m["kb_per_conn"] is not None
    assert "| server |" in res["markdown"]


@pytest.mark.timeout(300)
def test_executions_quick_run(tmp_path: Path) -> None:
    """``bench/executions.py --quick``: 2 workflows x 20 watchers, 6 executions at once, on the
    memory engine and (when Redis runs) the Redis engine; every watcher must get every event
    of every execution of its workflow, in order (the harness checks it and exits 1 if not)."""
    engines = ["memory", "redis"] if redis_running() else ["memory"]
    res = run_quick(
        "executions.py", ["--engines", ",".join(engines)], tmp_path / "executions.json", 240
    )
    assert [r["engine"] for r in res["runs"]] == engines
    for run in res["runs"]:
        assert run["connected"] == 40, run
        for phase in ("saturation", "latency"):
            p = run[phase]
            assert p["complete"], p
            assert p["deliveries"] == p["deliveries_expected"] == p["events_published"] * 20
            assert p["notices"] == p["unsubscribed"] == 6 * 20
            assert p["lat_p99_ms"] >= p["lat_p50_ms"] > 0
    assert "| memory |" in res["markdown"]


@pytest.mark.timeout(120)
def test_collab_quick_run(tmp_path: Path) -> None:
    """``bench/collab.py --quick``: 6 editors in one room, cursors at 30 Hz and canvas edits,
    through livepush's push endpoint (coalesced cursors) and CRDT endpoint, through the CRDT
    endpoint alone (Yjs awareness cursors), and on two Redis-engine nodes when Redis runs.
    Checks delivery only (every receiver got cursors from every other editor and every
    editor's last canvas edit), not speed. The y-websocket peer (npm) is not needed."""
    targets = ["livepush", "livepush-yjs"]
    if redis_running():
        targets.append("livepush-redis")
    res = run_quick("collab.py", ["--targets", ",".join(targets)], tmp_path / "collab.json", 100)
    assert [r["target"] for r in res["runs"]] == targets
    for run in res["runs"]:
        assert run["complete"], run
        assert run["all_cursors_seen"], run
        assert run["cursor_senders_seen_min"] == run["editors"] - 1
        assert run["edits_missing_at_end"] == 0
        assert run["cursor_delivered_per_s"] > 0
        assert run["edit_delivered_per_s"] > 0
        assert run["cursor_lat"]["p99_ms"] >= run["cursor_lat"]["p50_ms"] > 0
    assert "| livepush |" in res["markdown"]
