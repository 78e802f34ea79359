"""``cr-edge device clean NAME`` over the exec transport: pushed files go, recent ones stay
with ``--unused-for``, killed runs' leftovers go, a push in flight stays, and nothing is
removed while a command holds the workdir (the exclusive agent lock)."""

from __future__ import annotations

import fcntl
import json
import os
import time
from pathlib import Path

import device_fixtures as fx
import pytest
from test_devices_external import _external_copy

from cr_edge.devices import remote
from cr_edge.devices.registry import Device

device_home, exec_device = fx.device_home, fx.exec_device
DAY = 86400


def _validate(cli_run, model: Path, out: Path) -> list[str]:
    result = cli_run("validate", model, "--runtime", "cpu", "--on", "here", "--json", out)
    assert result.exit_code == 0, result.output
    return json.loads(out.read_text())["devices"]["here"]["pushed"]


def _age(path: Path, days: float) -> None:
    past = time.time() - days * DAY
    os.utime(path, (past, past))


@pytest.mark.slow
def test_clean_removes_what_no_recent_run_used(
    cli_run, exec_device: Device, exported: Path, tmp_path: Path
) -> None:
    work = Path(exec_device.workdir)
    out = tmp_path / "report.json"
    assert "model.onnx" in _validate(cli_run, exported / "model.onnx", out)
    old = {p.name for p in (work / "blobs").iterdir()}
    for blob in (work / "blobs").iterdir():
        _age(blob, 10)
    ext = _external_copy(exported, tmp_path / "ext", "model.data")
    _validate(cli_run, ext, out)  # a bundle, used now
    left = work / "runs" / "run-killed"  # what a SIGKILLed run leaves
    left.mkdir()
    (left / "x").write_bytes(b"x" * 1000)
    fresh = work / "blobs" / ".part-abc-1"  # a push in flight
    fresh.write_bytes(b"partial")
    stale = work / "blobs" / ".part-def-2"
    stale.write_bytes(b"partial")
    _age(stale, 1)

    result = cli_run("device", "clean", "here", "--unused-for", "1")
    assert result.exit_code == 0, result.output
    removed = len(old)  # the first model's blobs (the stale .part goes with the listing)
    assert f"removed {removed} pushed file(s) unused for 1 days" in result.output
    assert not left.exists() and fresh.exists() and not stale.exists()
    assert {p.name for p in (work / "blobs").iterdir()} == {".part-abc-1"}
    assert len(list((work / "bundles").iterdir())) == 1  # used within the day: kept
    assert old  # the first model's blobs are gone: the next run pushes them again
    assert "model.onnx" in _validate(cli_run, exported / "model.onnx", out)

    result = cli_run("device", "clean", "here")
    assert result.exit_code == 0, result.output
    assert {p.name for p in (work / "blobs").iterdir()} == {".part-abc-1"}
    assert list((work / "bundles").iterdir()) == []
    assert "kept 0" in result.output


def test_clean_waits_for_a_running_command(
    cli_run, exec_device: Device, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A command holds the workdir (shared lock): clean removes nothing, says it is busy."""
    work = Path(exec_device.workdir)
    (work / "blobs").mkdir(parents=True)
    blob = work / "blobs" / ("0" * 64)
    blob.write_bytes(b"in use")
    monkeypatch.setattr(remote, "LOCK_TIMEOUT", 0.5)
    with open(work / ".lock", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_SH)
        result = cli_run("device", "clean", "here")
    assert result.exit_code == 2, result.output
    assert "busy" in result.output and len(result.output.strip().splitlines()) == 1
    assert blob.exists()
