"""``cr-edge validate`` end to end: exit 0 on parity, 1 on a corrupted model, 2 on bad input."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from runtime_fixtures import (
    build_model_dir,
    copy_model,
    rewire_horner_mul,
    scale_coefficient,
    to_ort,
)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return build_model_dir(tmp_path_factory.getbasetemp())


def test_correct_model_passes_with_json(cli_run, model_dir, tmp_path):
    out = tmp_path / "report.json"
    result = cli_run(
        "validate", str(model_dir / "model.onnx"), "--runtime", "all", "--json", str(out)
    )
    assert result.exit_code == 0, result.output
    assert "PASS" in result.output and "UNAVAILABLE" in result.output
    report = json.loads(out.read_text())
    rows = {r["runtime"]: r for r in report["results"]}
    assert report["passed"] is True
    for name in ("cpu", "ort-mobile"):
        assert [rows[name][c]["status"] for c in ("outputs", "derivatives", "coverage")] == [
            "PASS"
        ] * 3
    assert rows["nnapi"]["coverage"]["status"] == "PASS"
    assert rows["cpu"]["tolerances"]["atol"] == 1e-5


@pytest.mark.parametrize("corruption", ["coefficient", "horner-node"])
def test_corrupted_model_fails_outputs_and_derivatives(cli_run, model_dir, tmp_path, corruption):
    folder = copy_model(model_dir, tmp_path / corruption)  # no companion: finite differences
    corrupt = scale_coefficient if corruption == "coefficient" else rewire_horner_mul
    corrupt(folder / "model.onnx")
    to_ort(folder / "model.onnx")
    out = tmp_path / "report.json"
    args = [str(folder / "model.onnx"), "--runtime", "cpu,ort-mobile", "--json", str(out)]
    result = cli_run("validate", *args)
    assert result.exit_code == 1, result.output
    rows = json.loads(out.read_text())["results"]
    for row in rows:
        assert row["outputs"]["status"] == "FAIL" and row["derivatives"]["status"] == "FAIL"
        assert row["derivatives"]["figures"]["method"] == "finite-differences"
    assert result.output.count("FAIL ") >= 4  # every failing check on its own line
    assert "check(s) failed" in result.output


def test_corrupted_model_and_companion_fail_through_the_companion(cli_run, model_dir, tmp_path):
    names = ("model.onnx", "model.jvp.onnx", "model.ref.npz")
    folder = copy_model(model_dir, tmp_path / "both", names)
    scale_coefficient(folder / "model.onnx")
    scale_coefficient(folder / "model.jvp.onnx")
    result = cli_run("validate", str(folder / "model.onnx"), "--runtime", "cpu")
    assert result.exit_code == 1
    assert "[cpu] derivatives: jvp (64, 4): max abs err" in result.output
    assert "[cpu] derivatives: companion's own y (64, 4)" in result.output


def test_a_failing_companion_y_is_named_as_such_not_shown_as_a_passing_jvp(
    cli_run, model_dir, tmp_path
):
    # Issue 12: the derivative cell read "FAIL companion: rel 4e-05 cos 1.000000".
    folder = copy_model(
        model_dir, tmp_path / "y-only", ("model.onnx", "model.jvp.onnx", "model.ref.npz")
    )
    model = onnx.load(folder / "model.jvp.onnx")
    producer = next(n for n in model.graph.node if "y" in n.output)
    producer.output[list(producer.output).index("y")] = "y_raw"
    shift = onnx.helper.make_tensor("y_shift", onnx.TensorProto.FLOAT, [], [1e-3])
    model.graph.initializer.append(shift)
    model.graph.node.append(onnx.helper.make_node("Add", ["y_raw", "y_shift"], ["y"]))
    onnx.save(model, folder / "model.jvp.onnx")  # y moves by 1e-3; the JVP cannot
    result = cli_run(
        "validate", str(folder / "model.onnx"), "--runtime", "cpu", "--json", tmp_path / "r.json"
    )
    assert result.exit_code == 1, result.output
    row = json.loads((tmp_path / "r.json").read_text())["results"][0]
    assert row["outputs"]["status"] == "PASS"
    assert row["derivatives"]["summary"].startswith("companion's own y failed; companion: rel")
    assert "[cpu] derivatives: companion's own y (64, 4): max abs err 0.001" in result.output
    assert "derivatives: jvp" not in result.output


def test_tolerance_flags_are_used(cli_run, model_dir, tmp_path):
    folder = copy_model(model_dir, tmp_path / "loose")
    scale_coefficient(folder / "model.onnx")
    loose = ["--atol", "0.1", "--deriv-rtol", "0.1", "--min-cosine", "0.99"]
    result = cli_run("validate", str(folder / "model.onnx"), "--runtime", "cpu", *loose)
    assert result.exit_code == 0, result.output


def _one_error_line(result, *needles: str) -> None:
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    error = [line for line in lines if "rror" in line]
    assert len(error) == 1, result.output
    for needle in needles:
        assert needle in error[0], error[0]
    assert "Traceback" not in result.output


def test_bad_inputs_exit_2_with_one_line(cli_run, model_dir, tmp_path):
    text = tmp_path / "text" / "model.onnx"
    text.parent.mkdir()
    text.write_text("not a model\n")
    shutil.copy(model_dir / "model.ref.npz", text.parent)
    _one_error_line(cli_run("validate", str(text), "--runtime", "cpu"), str(text))

    cut = tmp_path / "cut" / "model.onnx"
    copy_model(model_dir, cut.parent)
    cut.write_bytes((model_dir / "model.onnx").read_bytes()[:700])
    _one_error_line(cli_run("validate", str(cut), "--runtime", "cpu"), str(cut))

    cut_ort = cut.with_suffix(".ort")
    cut_ort.write_bytes((model_dir / "model.ort").read_bytes()[:900])
    _one_error_line(cli_run("validate", str(cut_ort), "--runtime", "ort-mobile"), str(cut_ort))

    wrong = tmp_path / "wrong.npz"
    oracle = dict(np.load(model_dir / "model.ref.npz"))
    oracle["x"] = np.zeros((64, 9), np.float32)
    oracle["v"] = oracle["x"]
    np.savez(wrong, **oracle)
    result = cli_run(
        "validate", str(model_dir / "model.onnx"), "--runtime", "cpu", "--ref", str(wrong)
    )
    _one_error_line(result, str(wrong), "input 'x'")

    result = cli_run("validate", str(model_dir / "model.onnx"), "--runtime", "cpu,tpu")
    _one_error_line(result, "unknown runtime 'tpu'")

    result = cli_run("validate", str(model_dir / "model.jvp.onnx"), "--runtime", "cpu")
    _one_error_line(result, "model.jvp.onnx", "derivative companion")

    result = cli_run("validate", str(tmp_path / "missing.onnx"))
    _one_error_line(result, "missing.onnx")


def test_external_data_escape_exits_2(cli_run, model_dir, tmp_path):
    import onnx

    folder = copy_model(model_dir, tmp_path / "ext", ("model.ref.npz",))
    model = onnx.load(model_dir / "model.onnx")
    path = folder / "model.onnx"
    onnx.save_model(model, path, save_as_external_data=True, location="w.bin", size_threshold=0)
    shutil.move(folder / "w.bin", tmp_path / "w.bin")
    model = onnx.load(path, load_external_data=False)
    for init in model.graph.initializer:
        init.external_data[0].value = "../w.bin"
    onnx.save_model(model, path)
    _one_error_line(cli_run("validate", str(path), "--runtime", "cpu"), str(path), "'../w.bin'")


def test_nothing_checkable_is_an_error_not_a_pass(cli_run, model_dir):
    result = cli_run("validate", str(model_dir / "model.onnx"), "--runtime", "xnnpack")
    _one_error_line(result, "no requested runtime could check it")


@pytest.mark.parametrize("name", ["model.onnx", "model.ort"])
@pytest.mark.parametrize("torch_importable", [False, True])
def test_validate_runs_without_torch(model_dir, tmp_path, name, torch_importable):
    """Where ``import torch`` fails, and where it would work: validate never imports it."""
    fake = tmp_path / "no_torch"
    fake.mkdir()
    if not torch_importable:
        (fake / "torch.py").write_text("raise ImportError('torch is not installed here')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(fake), str(REPO)])}
    code = (
        "import sys\n"
        "from cr_edge.cli import main\n"
        "try:\n"
        "    main()\n"
        "finally:\n"
        "    assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    args = [sys.executable, "-c", code, "validate", str(model_dir / name), "--runtime", "all"]
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "PASS" in done.stdout
