"""Mobile formats: ``model.ort`` (+ reduced-operator config) and ``model.pte`` (ExecuTorch).

Both are run, not just written: the ORT-format files in ONNX Runtime with
``session.load_model_format=ORT``, the programs in ExecuTorch's own runtime. fp32 must
match the PyTorch oracle as tightly as ``model.onnx`` does (atol 1e-5, rtol 1e-4).

int8 (.pte) is held to its quantization step instead, on the checkpoint's own calibration
inputs (the data the activation scales were calibrated on). One output step is the fp32
output range over 255 levels. Measured on the tiny test checkpoints: p99 1.1-1.6 steps,
max 1.6-4.6 steps, argmax agreement 98.7-99.8% (two-class breast-cancer has the most
samples near the boundary). The bounds leave about 2x: p99 <= 4 steps, max <= 10 steps,
>= 97% of predictions unchanged. Out-of-range points (the oracle's edge-of-box inputs)
reach ~50 steps: int8 scales end at the calibrated range, so they are not used here.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from trained import (
    ATOL,
    INT8_ARGMAX,
    INT8_MAX_STEPS,
    INT8_P99_STEPS,
    RTOL,
    calibration_x,
    checkpoint,
    exported,
    oracle,
    run_onnx,
    run_pte,
)

from cr_edge.artifacts.metadata import key
from cr_edge.errors import ExportError, InputError
from cr_edge.export.exporter import ExportOptions, export, export_int8_pte
from cr_edge.export.mobile import convert_to_ort
from cr_edge.export.pte import INSTALL_HINT, MAX_BATCH
from cr_edge.runtimes.executorch import floor_of
from cr_edge.validate.tolerances import INT8_OUTPUT_STEPS
from cr_edge.validate.validator import validate

MOBILE = ExportOptions(formats=("onnx", "ort", "executorch"))
NETS = ("digits-cr", "digits-conv")
INT8_NETS = (*NETS, "breast-cancer-cr")  # feature vectors: the unfolded normalisation differs
# executorch.runtime announces itself as experimental on first use
pytestmark = pytest.mark.filterwarnings("ignore:This API is experimental")


# ---- ORT format --------------------------------------------------------------


@pytest.mark.parametrize("name", NETS)
def test_ort_format_loads_and_matches_pytorch(trained_root: Path, name: str) -> None:
    result = exported(trained_root, name, "mobile", MOBILE)
    ref = oracle(result)
    got = run_onnx(result.files["ort"], ort_format=True, x=ref["x"])
    np.testing.assert_allclose(got["y"], ref["y"], atol=ATOL, rtol=RTOL)
    jvp = run_onnx(result.files["jvp_ort"], ort_format=True, x=ref["x"], v=ref["v"])
    np.testing.assert_allclose(jvp["jvp"], ref["jvp"], atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize("name", NETS)
def test_required_operators_config_covers_both_models(trained_root: Path, name: str) -> None:
    result = exported(trained_root, name, "mobile", MOBILE)
    config = result.files["ort_config"]
    assert config.name == "model.required_operators.config"
    text = config.read_text()
    ops = {
        op
        for line in text.splitlines()
        if not line.startswith("#")
        for op in line.split(";")[-1].split(",")
    }
    linear = "Conv" if "conv" in name else "Gemm"
    assert {linear, "Mul", "Add"} <= ops and "Pow" not in ops
    assert str(result.out.resolve() / "model.jvp.ort") in text  # the header names final files
    assert not [p for p in result.out.iterdir() if p.name.startswith(".")]  # no build leftovers


def test_ort_conversion_errors_are_one_line(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="no ONNX model"):
        convert_to_ort(tmp_path / "model.onnx")
    (tmp_path / "model.onnx").write_bytes(b"not a protobuf")
    with pytest.raises(ExportError) as e:
        convert_to_ort(tmp_path / "model.onnx")
    assert "\n" not in str(e.value) and "model.onnx" in str(e.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]


# ---- ExecuTorch ---------------------------------------------------------------


@pytest.mark.parametrize("name", NETS)
def test_pte_runs_in_executorch_and_matches_pytorch(trained_root: Path, name: str) -> None:
    result = exported(trained_root, name, "mobile", MOBILE)
    ref = oracle(result)
    for n in (1, 7, 300):
        rows = np.arange(n) % len(ref["x"])
        got = run_pte(result.files["pte"], ref["x"][rows])
        np.testing.assert_allclose(got, ref["y"][rows], atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize("name", NETS)
def test_pte_sidecar_reports_the_delegation(trained_root: Path, name: str) -> None:
    result = exported(trained_root, name, "mobile", MOBILE)
    info = json.loads(result.files["pte_info"].read_text())
    assert info["precision"] == "fp32" and info["batch"] == {"min": 1, "max": MAX_BATCH}
    split = info["delegation"]
    assert split["subgraphs"] >= 1 and split["delegated"] > split["portable"]
    linear = "aten_convolution_default" if "conv" in name else "aten_linear_default"
    assert split["ops"][linear]["portable"] == 0  # the heavy ops always go to XNNPACK


@pytest.mark.parametrize("name", NETS)
def test_pte_floor_takes_the_input_and_returns_the_outputs_shapes_without_arithmetic(
    trained_root: Path, name: str
) -> None:
    """``model.floor.pte``: profile's dispatch floor for the program (``export_floor``)."""
    result = exported(trained_root, name, "mobile", MOBILE)
    floor = result.files["pte_floor"]
    assert floor == floor_of(result.files["pte"])
    ref = oracle(result)
    for n in (1, 7, 300):
        rows = np.arange(n) % len(ref["x"])
        got = run_pte(floor, ref["x"][rows])
        assert got.shape == ref["y"][rows].shape and got.dtype == ref["y"].dtype
        assert not got.any()
    info = json.loads(result.files["pte_floor_info"].read_text())
    assert info["batch"] == {"min": 1, "max": MAX_BATCH}
    assert info["delegation"]["delegated"] == 0  # nothing for XNNPACK to compute


def test_fixed_batch_pte(trained_root: Path) -> None:
    options = ExportOptions(formats=("executorch",), fixed_batch=4, companion=False)
    result = exported(trained_root, "digits-cr", "pte-batch4", options)
    info = json.loads(result.files["pte_info"].read_text())
    assert info["batch"] == {"fixed": 4} and info["input_shape"][0] == 4
    ref = oracle(result)
    np.testing.assert_allclose(
        run_pte(result.files["pte"], ref["x"][:4]), ref["y"][:4], atol=ATOL, rtol=RTOL
    )


@pytest.mark.parametrize("name", INT8_NETS)
def test_int8_pte_stays_within_its_quantization_step(trained_root: Path, name: str) -> None:
    options = ExportOptions(formats=("executorch",), int8=True, companion=False)
    result = exported(trained_root, name, "pte-int8", options)
    info = json.loads(result.files["pte_info"].read_text())
    assert info["precision"] == "int8" and info["quantization"]["calibration_samples"] > 0
    x = calibration_x(trained_root, name)
    fp32 = run_onnx(result.files["onnx"], x=x)["y"]
    int8 = run_pte(result.files["pte"], x)
    steps = np.abs(int8 - fp32) / (np.ptp(fp32) / 255)
    assert np.percentile(steps, 99) <= INT8_P99_STEPS, np.percentile(steps, 99)
    assert steps.max() <= INT8_MAX_STEPS, steps.max()
    assert (int8.argmax(1) == fp32.argmax(1)).mean() >= INT8_ARGMAX


@pytest.fixture(scope="module")
def int8_program(trained_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The conv net's int8 program beside its oracle, calibrated on the oracle's inputs
    (as the pipeline's is): measured 1.6 of the 3 output steps int8 tolerates."""
    result = exported(trained_root, "digits-conv", "mobile", MOBILE)
    folder = tmp_path_factory.mktemp("int8-pte")
    (folder / "model.ref.npz").write_bytes(result.files["ref"].read_bytes())
    x = oracle(result)["x"]
    return export_int8_pte(checkpoint(trained_root, "digits-conv"), folder / "model.pte", x).path


def test_validate_reads_an_int8_program_s_precision_and_step_from_its_sidecar(
    int8_program: Path,
) -> None:
    info = json.loads((int8_program.parent / "model.pte.json").read_text())
    step = float(info["metadata"][key("output_step")])
    (row,) = validate([int8_program], "executorch-xnnpack").results
    assert row.tolerances.precision == "int8" and "metadata" in row.tolerances.sources["atol"]
    assert row.tolerances.atol == pytest.approx(INT8_OUTPUT_STEPS * step)
    assert row.outputs.status == "PASS", row.outputs.summary
    assert row.derivatives.status == "UNAVAILABLE"  # int8: no finite differences, no companion


def test_an_int8_program_off_by_more_than_its_steps_fails(int8_program: Path, tmp_path) -> None:
    """The same program against an oracle whose one output moved by 4 int8 output steps."""
    for name in ("model.pte", "model.pte.json"):
        (tmp_path / name).write_bytes((int8_program.parent / name).read_bytes())
    with np.load(int8_program.parent / "model.ref.npz") as f:
        ref = {k: f[k] for k in f.files}
    step = float(
        json.loads((tmp_path / "model.pte.json").read_text())["metadata"][key("output_step")]
    )
    ref["y"][5, 3] += (INT8_OUTPUT_STEPS + 1) * step
    np.savez(tmp_path / "model.ref.npz", **ref)
    report = validate([tmp_path / "model.pte"], "executorch-xnnpack")
    assert not report.passed and "outputs" in report.failures()[0], report.failures()


def test_an_unreadable_sidecar_is_an_input_error(int8_program: Path, tmp_path) -> None:
    (tmp_path / "model.pte").write_bytes(int8_program.read_bytes())
    (tmp_path / "model.ref.npz").write_bytes((int8_program.parent / "model.ref.npz").read_bytes())
    (tmp_path / "model.pte.json").write_text('{"precision": ')
    with pytest.raises(InputError, match=r"model\.pte\.json: not a readable sidecar"):
        validate([tmp_path / "model.pte"], "executorch-xnnpack")


def test_missing_executorch_is_one_clear_line(
    trained_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for module in [m for m in sys.modules if m == "executorch" or m.startswith("executorch.")]:
        monkeypatch.setitem(sys.modules, module, None)
    monkeypatch.setitem(sys.modules, "executorch", None)
    out = tmp_path / "out"
    with pytest.raises(ExportError) as e:
        export(checkpoint(trained_root, "digits-cr"), out, ExportOptions(formats=("executorch",)))
    assert str(e.value) == INSTALL_HINT
    assert not (out / "model.pte").exists() and not (out / "model.ref.npz").exists()
