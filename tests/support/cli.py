"""The ``facepose`` command as a user runs it, and the one-line-error contract of its failures."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.support import ROOT


def facepose(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run ``python -m facepose.cli *args`` from the repository root -> the finished process (text output)."""
    return subprocess.run(
        [sys.executable, "-m", "facepose.cli", *args], capture_output=True, text=True, timeout=300,
        env={**os.environ, **(env or {})}, cwd=ROOT,
    )


def assert_one_line_error(result: subprocess.CompletedProcess, *names: str) -> None:
    """A failed run printed exactly one ``error: ...`` line, last, naming each of ``names``, and no traceback."""
    assert result.returncode != 0
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error: ")]
    # One error line, last (retry warnings may come before it), and never a traceback.
    assert len(errors) == 1 and lines[-1] == errors[0], result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    for name in names:
        assert name in errors[0], (name, errors[0])
