"""The kill loop of row 7: SIGKILL a command at random points, then inspect every final file."""

from __future__ import annotations

import random
import subprocess
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
    """Run ``cr-edge ARGS`` once to the end (timed), then ``kills`` times SIGKILLed part-way."""
    rng = random.Random(seed)
    tally = KillTally()
    start = time.perf_counter()
    subprocess.run(cli_command(*args), cwd=REPO, capture_output=True, check=False)
    duration = time.perf_counter() - start
    for _ in range(kills):
        proc = subprocess.Popen(
            cli_command(*args), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:
            proc.wait(timeout=duration * rng.uniform(*WINDOW))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            tally.killed += 1
        tally.runs += 1
        tally.partial += [f"{out.name}/{p}" for p in partial_files(out)] if out.exists() else []
    return tally
