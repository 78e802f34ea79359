"""Run a Python module in a child interpreter that imports this same cr-edge.

Three jobs need a fresh process: opening an untrusted model under limits (a crash
there must not end cr-edge), measuring a load's peak memory (the parent's heap would
hide it), and onnxruntime's ORT converter (which configures logging and prints as it
imports). Each goes through ``run_python``, so the child always finds the package the
parent runs from, even from a checkout that is not installed.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

PACKAGE_ROOT = str(Path(__file__).resolve().parents[1])


def run_python(
    args: list[str],
    timeout_s: float,
    preexec: Callable[[], None] | None = None,
    extra_env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess:
    """``python *args`` (e.g. ``["-m", module, ...]``), output captured as text.

    ``subprocess.TimeoutExpired`` on a hang; ``preexec`` (POSIX only) sets limits;
    ``extra_env`` adds to this process's environment.
    """
    env = {**os.environ, **(extra_env or {})}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (PACKAGE_ROOT, env.get("PYTHONPATH")) if p)
    return subprocess.run(
        [sys.executable, *args],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        env=env,
        preexec_fn=preexec if os.name == "posix" else None,
        check=False,
    )
