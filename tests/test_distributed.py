"""``cr-edge train --nproc 2``: DistributedDataParallel on 2 CPU processes (gloo) against one
process, exactly one checkpoint, and a killed rank failing cleanly with nothing written."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cr_edge.train.ranks import usable_cores

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(REPO)}


def _train(out: Path, *args: str) -> subprocess.Popen:
    command = [
        sys.executable,
        "-m",
        "cr_edge.cli",
        "train",
        "--data",
        "digits",
        "--out",
        str(out),
    ]
    return subprocess.Popen(
        [*command, *args], env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def test_nproc_above_the_cores_without_force_is_exit_2(cli_run, tmp_path):
    too_many = usable_cores() + 1
    result = cli_run("train", "--data", "digits", "--nproc", too_many, "--out", tmp_path / "ck")
    assert result.exit_code == 2
    assert f"--nproc {too_many}: this machine has {usable_cores()} usable cores" in result.output
    assert not (tmp_path / "ck").exists()


@pytest.mark.slow
def test_two_processes_match_one_and_write_one_checkpoint(tmp_path):
    runs = {n: _train(tmp_path / f"n{n}", "--epochs", "15", "--nproc", str(n)) for n in (1, 2)}
    for proc in runs.values():
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err
    acc = {n: json.loads((tmp_path / f"n{n}" / "metrics.json").read_text()) for n in runs}
    # the same global batch and learning rate; 270 test digits: 0.03 is ~2 standard errors
    assert abs(acc[1]["test_accuracy"] - acc[2]["test_accuracy"]) <= 0.03
    files = sorted(p.name for p in (tmp_path / "n2").iterdir())
    manifest = json.loads((tmp_path / "n2" / "manifest.json").read_text())
    assert [f for f in files if f not in ("manifest.json", ".cr-edge.lock")] == sorted(
        manifest["files"]
    )


def _rank_pid(rank: str, deadline: float) -> int:
    """The pid of the worker process with ``RANK=rank`` (read from /proc)."""
    while time.monotonic() < deadline:
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                cmd = (entry / "cmdline").read_bytes()
                env = (entry / "environ").read_bytes().split(b"\0")
            except OSError:
                continue
            worker = b"cr_edge.train.distributed" in cmd and b"torch.distributed.run" not in cmd
            if worker and f"RANK={rank}".encode() in env:
                return int(entry.name)
        time.sleep(0.2)
    raise AssertionError(f"no rank {rank} worker appeared")


@pytest.mark.slow
def test_a_killed_rank_fails_with_one_line_and_writes_nothing(tmp_path):
    out, recipe = tmp_path / "ck", tmp_path / "long.toml"
    recipe.write_text("epochs = 100000\npatience = 100000\n")  # runs until it is killed
    proc = _train(out, "--recipe", str(recipe), "--nproc", "2")
    pid = _rank_pid("1", time.monotonic() + 120)
    time.sleep(8)  # past start-up (torch, the data): both ranks in their collectives
    os.kill(pid, signal.SIGKILL)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 1, err
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "rank 1 exited with signal SIGKILL" in lines[0], err
    assert "no checkpoint was written" in lines[0]
    left = [p.name for p in out.iterdir()] if out.exists() else []
    assert not [n for n in left if n != ".cr-edge.lock"], left
