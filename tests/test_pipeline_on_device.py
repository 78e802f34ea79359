"""``pipeline --on NAME``: the run's models validated and profiled on the device as well."""

from __future__ import annotations

import json
from pathlib import Path

import device_fixtures as fx
import pytest

device_home, exec_device = fx.device_home, fx.exec_device


@pytest.mark.slow
def test_pipeline_on_an_exec_device_validates_and_profiles_there(
    cli_run, exec_device, tmp_path: Path
):
    out = tmp_path / "run"
    result = cli_run(
        "pipeline",
        "--epochs",
        "2",
        "--runtime",
        "cpu",
        "--certify-on",
        "none",
        "--on",
        exec_device.name,
        "--out",
        out,
    )
    assert result.exit_code == 0, result.output
    rows = json.loads((out / "validate.json").read_text())["results"]
    here = {r["artifact"] for r in rows if r["runtime"] == "cpu"}
    there = {r["artifact"] for r in rows if r["runtime"] == f"cpu@{exec_device.name}"}
    assert here and here == there  # every model the run validated, validated there too
    assert all(r["outputs"]["status"] == "PASS" for r in rows)
    profiled = json.loads((out / "profile.devices.json").read_text())[exec_device.name]
    assert {r["runtime"] for r in profiled["results"]} == {f"cpu@{exec_device.name}"}
    manifest = json.loads((out / "manifest.json").read_text())["files"]
    assert "profile.devices.json" in manifest


def test_an_unknown_device_fails_before_training(cli_run, device_home, tmp_path: Path):
    result = cli_run("pipeline", "--on", "nowhere", "--out", tmp_path / "run")
    assert result.exit_code == 2 and "nowhere" in result.output
    assert not (tmp_path / "run" / "checkpoint").exists()
