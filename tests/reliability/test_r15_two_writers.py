"""Row 15: two writers into one output folder: the second is refused, nothing is corrupted.

Two ``cr-edge train`` runs of different recipes (digits and breast-cancer: other
inputs, other weights) start at the same moment into one ``--out``. Whatever the
timing, the folder must afterwards be one complete, consistent checkpoint: it loads,
every file matches its manifest entry, and it is the recipe of a run that succeeded.
A run that lost the race exits 2 with one line naming the holder's pid and command.
``CR_EDGE_RACES`` races here (2 by default, one in each start order;
``bench/reliability.py`` runs 20).

The lock itself is checked without timing: a folder held by this process refuses a
writer, and the lock of a writer killed by SIGKILL is taken over by the next one.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from cr_edge.artifacts.folder_lock import LOCK_NAME, writing
from cr_edge.artifacts.manifest import MANIFEST, verify
from cr_edge.checkpoint import load_checkpoint
from cr_edge.errors import InputError
from reliability.helpers import REPO, cli_command, one_line_error, run_process

RACES = int(os.environ.get("CR_EDGE_RACES", "2"))
RECIPES = ("digits-cr", "breast-cancer-cr")
HOLDER = re.compile(r"is being written by pid \d+ \(cr-edge train, started [^)]+\)")


@dataclass
class RaceTally:
    races: int = 0
    refused: int = 0  # runs that lost and said so in one line, exit 2
    corrupted: list[str] = field(default_factory=list)


def train_args(recipe: str, out: Path) -> list[object]:
    return ["train", "--recipe", recipe, "--epochs", "3", "--out", out, "--force"]


def race(out: Path, races: int) -> RaceTally:
    """``races`` times: both recipes into ``out`` at once, then judge the folder."""
    tally = RaceTally()
    for n in range(races):
        order = RECIPES if n % 2 == 0 else RECIPES[::-1]
        procs = [
            subprocess.Popen(
                cli_command(*train_args(r, out)),
                cwd=REPO,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
            for r in order
        ]
        results = [
            (r, p.wait(timeout=600), p.stderr.read()) for r, p in zip(order, procs, strict=True)
        ]
        tally.races += 1
        winners = [r for r, code, _ in results if code == 0]
        for recipe, code, err in results:
            if code == 2 and HOLDER.search(err) and "Traceback" not in err:
                tally.refused += 1
            elif code != 0:
                tally.corrupted.append(f"race {n}: {recipe} exited {code}: {err[-300:]}")
        problem = judge(out, winners)
        if problem:
            tally.corrupted.append(f"race {n}: {problem}")
    return tally


def judge(out: Path, winners: list[str]) -> str | None:
    """Why ``out`` is not one consistent checkpoint of a winning recipe; None if it is."""
    try:
        ckpt = load_checkpoint(out)
        entries = json.loads((out / MANIFEST).read_text())["files"]
        for name in entries:
            verify(out / name)
    except (InputError, OSError, ValueError, KeyError) as e:
        return f"{type(e).__name__}: {e}"
    if ckpt.recipe.name not in winners:
        return f"holds {ckpt.recipe.name}, but the runs that finished were {winners}"
    return None


@pytest.mark.slow
def test_two_writers_racing_into_one_folder_never_corrupt_it(tmp_path):
    tally = race(tmp_path / "out", RACES)
    print(
        f"row 15: {tally.races} races, {tally.refused} second writers refused, "
        f"{len(tally.corrupted)} corrupted"
    )
    assert not tally.corrupted, tally.corrupted
    assert tally.refused >= 1  # the runs did overlap, and the lock turned one away


def test_a_held_folder_refuses_a_second_writer_in_one_line(tmp_path, checkpoint):
    out = tmp_path / "ex"
    with writing(out, "export"):
        done = run_process("export", checkpoint, "--out", out, "--force")
    assert done.returncode == 2, done.stderr
    line = one_line_error(done)
    assert f"{out} is being written by pid {os.getpid()} (" in line, line
    assert ", started " in line, line
    assert not (out / "model.onnx").exists()


@pytest.mark.slow
def test_the_lock_of_a_killed_writer_is_taken_over(tmp_path):
    out = tmp_path / "ck"
    proc = subprocess.Popen(
        cli_command("train", "--recipe", "digits-cr", "--epochs", "200", "--out", out),
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while not (out / LOCK_NAME).is_file() or not (out / LOCK_NAME).read_text():
        assert time.monotonic() < deadline and proc.poll() is None, "the writer never locked"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert str(proc.pid) in (out / LOCK_NAME).read_text()  # the killed holder's record stays
    done = run_process(*train_args("breast-cancer-cr", out)[:-1])
    assert done.returncode == 0, done.stderr
    assert f"taking over from pid {proc.pid} (cr-edge train" in done.stderr
    assert load_checkpoint(out).recipe.name == "breast-cancer-cr"
    assert not (out / LOCK_NAME).exists()  # a finished writer leaves no lock behind
