"""`cr-edge pipeline` end to end: every artifact, a summary that agrees with them, clean Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from terminal_signals import from_a_terminal

from cr_edge.pipeline import executorch_installed

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def run_dir(cli_run, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("pipeline") / "digits"
    # certification on the emulated device is its own test (test_devices_certify)
    args = ["pipeline", "--recipe", "digits-cr", "--epochs", "20", "--certify-on", "none"]
    result = cli_run(*args, "--out", out)
    assert result.exit_code == 0, result.output  # every stage ran and every check passed
    return out


def test_every_stage_leaves_its_artifacts(run_dir: Path):
    for rel in (
        "checkpoint/model.safetensors",
        "checkpoint/config.json",
        "export/model.onnx",
        "export/model.jvp.onnx",
        "export/model.ref.npz",
        "export/model.ort",
        *(["export/model.pte"] if executorch_installed() else []),
        "validate.json",
        "profile.json",
        "summary.json",
        "summary.md",
    ):
        assert (run_dir / rel).is_file(), rel
    quantized = json.loads((run_dir / "quantized" / "quantize.json").read_text())
    models = list((run_dir / "quantized").glob("model.*.onnx"))
    assert (quantized["policy"] == "fp32") == (not models), quantized["notes"]
    assert all(p.name == f"model.{quantized['policy']}.onnx" for p in models if "jvp" not in p.name)


@pytest.mark.skipif(not executorch_installed(), reason="the int8 .pte needs executorch")
def test_the_int8_program_is_validated_at_int8_tolerances_and_kept_only_if_it_passes(
    run_dir: Path,
):
    pte = json.loads((run_dir / "summary.json").read_text())["executorch_int8"]
    path = run_dir / "quantized" / pte["file"]
    manifest = json.loads((run_dir / "quantized" / "manifest.json").read_text())["files"]
    rows = [
        r
        for r in json.loads((run_dir / "validate.json").read_text())["results"]
        if Path(r["artifact"]).name == pte["file"]
    ]
    if not pte["kept"]:  # not shipped, and the summary names the failed check
        assert not path.exists() and pte["file"] not in manifest and not rows
        assert "outputs" in pte["note"], pte
        return
    assert path.is_file() and {pte["file"], pte["file"] + ".json"} <= set(manifest)
    (row,) = rows
    assert row["runtime"] == "executorch-xnnpack" and row["outputs"]["status"] == "PASS"
    assert row["tolerances"]["precision"] == "int8"


def test_summary_agrees_with_the_artifacts(run_dir: Path):
    summary = json.loads((run_dir / "summary.json").read_text())
    sizes = {p.name: p.stat().st_size for p in run_dir.rglob("*") if p.is_file()}
    for name, size in summary["files"].items():
        assert sizes[name] == size, name
    ref = np.load(run_dir / "export" / "model.ref.npz")
    sess = ort.InferenceSession(str(run_dir / "export" / "model.onnx"))
    (logits,) = sess.run(None, {"x": ref["x_test"]})
    accuracy = float((logits.argmax(1) == ref["y_test"]).mean())
    assert accuracy == pytest.approx(summary["fp32_accuracy"], abs=1e-6)
    meta = {p.key: p.value for p in onnx.load(run_dir / "export" / "model.onnx").metadata_props}
    assert meta["cr_edge.activation"] == "poly"
    assert summary["parity"]["model.onnx"]["cpu"] == "PASS/PASS"
    assert summary["passed"] == (not summary["failures"])


def test_a_finished_run_is_not_overwritten_without_force(cli_run, run_dir: Path):
    result = cli_run("pipeline", "--epochs", "1", "--out", run_dir)
    assert result.exit_code == 2 and "--force" in result.output


def _partial_files(folder: Path) -> list[Path]:
    return [
        p
        for p in folder.rglob("*")
        if p.is_file() and p.name.startswith(".") and p.name.endswith(".tmp")
    ]


def test_sigint_mid_pipeline_leaves_no_partial_file(tmp_path: Path):
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "cr_edge.cli",
            "pipeline",
            "--epochs",
            "20",
            "--certify-on",
            "none",
            "--out",
            str(out),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
        preexec_fn=from_a_terminal,
    )
    deadline = time.monotonic() + 120
    while not (out / "export" / "model.onnx").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=60) != 0
    assert _partial_files(out) == []
    assert not (out / "summary.json").exists()
    onnx.checker.check_model(onnx.load(out / "export" / "model.onnx"))
    for name in ("config.json", "metrics.json"):
        json.loads((out / "checkpoint" / name).read_text())
