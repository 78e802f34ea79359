"""The kill loop of row 7: SIGKILL a command at random points, then inspect every final file."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from itertools import pairwise
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


def kill_in_write(args: list[object], kill_at: int, under: Path | None = None) -> int:
    """Run ``cr-edge ARGS``, killed in its ``kill_at``-th write (into ``under`` only, if given)."""
    command = [sys.executable, "-m", "reliability.killpoint", str(kill_at), *map(str, args)]
    return subprocess.run(
        command, cwd=REPO, env=_env(under), capture_output=True, check=False
    ).returncode


def count_writes(args: list[object]) -> int:
    """How many file writes one complete run makes (a kill point past the last never fires)."""
    return max(len(written_files(args)), 1)


def written_files(args: list[object], under: Path | None = None) -> list[str]:
    """The file of each write one complete run makes, in order (into ``under`` only, if given)."""
    probe = [sys.executable, "-c", _COUNTER, *map(str, args)]
    done = subprocess.run(
        probe, cwd=REPO, env=_env(under), capture_output=True, text=True, check=False
    )
    return json.loads(done.stderr.strip().splitlines()[-1])


def spread_points(count: int, kills: int, seed: int) -> list[int]:
    """``kills`` write numbers in 1..count, one drawn from each of ``kills`` equal stretches,
    so that the kills reach every stage of a long command rather than bunching."""
    rng = random.Random(seed)
    edges = [round(count * k / kills) for k in range(kills + 1)]
    return [min(rng.randint(lo + 1, max(hi, lo + 1)), count) for lo, hi in pairwise(edges)]


def _env(under: Path | None) -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), str(REPO / "tests")]))
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env.pop("CR_EDGE_KILL_UNDER", None)
    if under is not None:
        env["CR_EDGE_KILL_UNDER"] = str(under)
    return env


_COUNTER = """
import json, sys
from reliability import killpoint
sys.argv = ["killpoint", "0", *sys.argv[1:]]
try:
    killpoint.main()
finally:
    print(json.dumps(killpoint.written), file=sys.stderr)
"""
