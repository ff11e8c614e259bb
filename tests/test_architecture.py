"""The package layers of docs/architecture.md hold, and the check that enforces them can fail.

The contracts live in pyproject.toml (`[tool.importlinter]`); `make lint` runs them too. Here
they run on the real tree, and on a copy of it with one upward import added, which they must
reject and name.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_LINT = "from importlinter.cli import lint_imports_command; lint_imports_command()"


def lint_imports(tree: Path) -> subprocess.CompletedProcess[str]:
    """Run import-linter with `tree`'s pyproject.toml on the livepush package under tree/src."""
    env = {**os.environ, "PYTHONPATH": str(tree / "src"), "NO_COLOR": "1"}
    return subprocess.run(
        [sys.executable, "-c", _LINT, "--no-cache"],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_layers_hold_on_the_tree() -> None:
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "3 kept, 0 broken" in result.stdout


@pytest.mark.parametrize(
    ("module", "upward", "broken"),
    [
        # the hub importing a feature: what issue 13 untangled
        ("core/commands.py", "livepush.collab.rooms", "livepush.core is not allowed to import"),
        # a transport reaching up into the HTTP API
        ("transports/push.py", "livepush.http.api", "livepush.transports is not allowed"),
        # the client importing server code instead of the wire contract
        ("client/backoff.py", "livepush.core.session", "livepush.client is not allowed"),
        # a feature importing its sibling
        ("execution/relay.py", "livepush.collab.tabs", "livepush.execution is not allowed"),
    ],
)
def test_an_upward_import_is_rejected(
    tmp_path: Path, module: str, upward: str, broken: str
) -> None:
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    shutil.copytree(
        ROOT / "src" / "livepush",
        tmp_path / "src" / "livepush",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    target = tmp_path / "src" / "livepush" / module
    target.write_text(target.read_text() + f"\nimport {upward}  # noqa: E402\n")
    result = lint_imports(tmp_path)
    assert result.returncode != 0, result.stdout
    assert broken in result.stdout, result.stdout
    assert upward in result.stdout
