"""The kill loop of row 7: SIGKILL a command at random points, then inspect every final file."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from reliability.helpers import REPO, cli_command, partial_files

# Kill points as a share of one complete run's duration: the first half is mostly
# imports, the writes come at the end.
WINDOW = (0.5, 0.99)


@dataclass
class KillTally:
    runs: int = 0
    killed: int = 0  # runs that were still going when the signal came
    partial: list[str] = field(default_factory=list)


def kill_loop(args: list[object], out: Path, kills: int, seed: int) -> KillTally:
    """Run ``cr-edge ARGS`` once to the end (timed), then ``kills`` times SIGKILLed part-way.

    Half of the kills come at a random time, half inside a random file write
    (``killpoint``), so a non-atomic writer is caught, not only a slow one.
    """
    rng = random.Random(seed)
    tally = KillTally()
    start = time.perf_counter()
    subprocess.run(cli_command(*args), cwd=REPO, capture_output=True, check=False)
    duration = time.perf_counter() - start
    writes = count_writes(args)
    for k in range(kills):
        if k % 2:
            killed = kill_in_write(args, rng.randint(1, writes)) == -signal.SIGKILL
        else:
            killed = _timed_kill(args, duration * rng.uniform(*WINDOW))
        tally.killed += killed
        tally.runs += 1
        tally.partial += [f"{out.name}/{p}" for p in partial_files(out)] if out.exists() else []
    return tally


def _timed_kill(args: list[object], after_s: float) -> bool:
    proc = subprocess.Popen(
        cli_command(*args), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        proc.wait(timeout=after_s)
        return False
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return True


def kill_in_write(args: list[object], kill_at: int) -> int:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), str(REPO / "tests")]))
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    command = [sys.executable, "-m", "reliability.killpoint", str(kill_at), *map(str, args)]
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, check=False).returncode


def count_writes(args: list[object]) -> int:
    """How many file writes one complete run makes (a kill point past the last never fires)."""
    probe = [sys.executable, "-c", _COUNTER, *map(str, args)]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), str(REPO / "tests")]))
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    done = subprocess.run(probe, cwd=REPO, env=env, capture_output=True, text=True, check=False)
    return max(int(done.stderr.strip().splitlines()[-1]), 1)


_COUNTER = """
import sys
from reliability import killpoint
sys.argv = ["killpoint", "0", *sys.argv[1:]]
try:
    killpoint.main()
finally:
    print(killpoint._count, file=sys.stderr)
"""
