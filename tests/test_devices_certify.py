"""``quantize --certify-on``: a candidate qualifies only if it passes on every named device.

The diagnosis rule (which CPU feature explains a device's disagreement) is checked on
fabricated fingerprints and hand-built graphs. Certification runs for real: on an exec
device that runs this Python (``device_fixtures``), and, slow, on the emulated
Neoverse-N1 (fp16 arithmetic and dotprod). A failing device verdict is fabricated
through the quantize stage's hook, never by replacing validate.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import device_fixtures as fx
import onnx
import pytest
from onnx import TensorProto, helper

from cr_edge import api
from cr_edge.devices import diagnosis
from cr_edge.devices.certify import DeviceCertifier, resolve, summary_entry, summary_lines
from cr_edge.devices.registry import Device
from cr_edge.quantize.certification import CandidateFiles, DeviceVerdict
from cr_edge.quantize.policy import QuantConfig
from cr_edge.quantize.quantizer import quantize
from cr_edge.validate.tolerances import Overrides
from cr_edge.validate.validator import validate

device_home, exec_device, emulated_arm64 = fx.device_home, fx.exec_device, fx.emulated_arm64

A72 = {"arch": "aarch64", "cpu": "cortex-a72 (qemu)", "isa": ["asimd"]}
N1 = {
    "arch": "aarch64",
    "cpu": "neoverse-n1 (qemu)",
    "isa": ["asimd", "fphp", "asimdhp", "asimddp"],
}
V2 = {"arch": "aarch64", "cpu": "Neoverse-V2", "isa": [*N1["isa"], "i8mm", "bf16", "sve"]}
X86 = {"arch": "x86_64", "cpu": "Xeon", "isa": ["avx2", "fma", "f16c"]}


# --- the rule, on fabricated fingerprints ---------------------------------------------


def test_an_fp16_disagreement_is_blamed_on_fp16_arithmetic_only_where_the_core_has_it():
    assert "fp16 arithmetic (asimdhp/fphp)" in diagnosis.likely_cause(diagnosis.FP16, N1)
    assert diagnosis.likely_cause(diagnosis.FP16, A72).startswith("no fp16 arithmetic")
    assert diagnosis.likely_cause(diagnosis.FP16, X86).startswith("no fp16 arithmetic")


def test_an_int8_disagreement_names_i8mm_then_dotprod_then_plain_neon():
    assert diagnosis.likely_cause(diagnosis.INT8, V2).startswith("i8mm")
    assert diagnosis.likely_cause(diagnosis.INT8, N1).startswith("dotprod (asimddp")
    assert "plain NEON" in diagnosis.likely_cause(diagnosis.INT8, A72)
    assert "without VNNI" in diagnosis.likely_cause(diagnosis.INT8, X86)
    # float arithmetic: no feature changes it, whatever the core has
    assert "summation order" in diagnosis.likely_cause(diagnosis.FLOAT, V2)


def test_a_disagreement_is_a_different_verdict_or_twice_the_error():
    assert diagnosis.disagrees(1e-3, 1.1e-3, True, False)  # verdicts differ
    assert diagnosis.disagrees(1e-3, 2.5e-3, True, True)  # both pass, 2.5x the error
    assert not diagnosis.disagrees(1e-3, 1.5e-3, True, True)
    assert not diagnosis.disagrees(None, 1.0, True, True)
    line = diagnosis.explain("n1", "outputs", 0.0071, 0.037, 0.01, diagnosis.FP16, N1)
    assert "0.037 there (5.2x), 0.0071 here, tolerance 0.01" in line
    assert "fphp" in line


def _graph(nodes, inits, x_type=TensorProto.FLOAT) -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", x_type, [1, 4])
    y = helper.make_tensor_value_info("y", x_type, [1, 4])
    return helper.make_model(helper.make_graph(nodes, "g", [x], [y], inits))


def test_what_a_model_computes_in_is_read_from_its_graph():
    w16 = helper.make_tensor("w", TensorProto.FLOAT16, [4, 4], [0] * 16)
    fp16 = _graph([helper.make_node("MatMul", ["x", "w"], ["y"])], [w16], TensorProto.FLOAT16)
    assert diagnosis.kernels(fp16) == diagnosis.FP16
    # int8 weights dequantized to float: float arithmetic (w8)
    deq = [
        helper.make_node("DequantizeLinear", ["q", "s"], ["w"]),
        helper.make_node("MatMul", ["x", "w"], ["y"]),
    ]
    q = helper.make_tensor("q", TensorProto.INT8, [4, 4], [1] * 16)
    s = helper.make_tensor("s", TensorProto.FLOAT, [], [0.1])
    assert diagnosis.kernels(_graph(deq, [q, s])) == diagnosis.FLOAT
    dyn = [helper.make_node("DynamicQuantizeLinear", ["x"], ["xq", "xs", "xz"]), *deq]
    assert diagnosis.kernels(_graph(dyn, [q, s])) == diagnosis.INT8
    for level, kind in ((4, diagnosis.INT8), (0, diagnosis.FLOAT)):
        nbits = helper.make_node(
            "MatMulNBits", ["x", "q", "s"], ["y"], domain="com.microsoft",
            K=4, N=4, bits=8, block_size=16, accuracy_level=level,
        )  # fmt: skip
        assert diagnosis.kernels(_graph([nbits], [q, s])) == kind


def _row(artifact: Path, runtime: str, status: str, err: float):
    from cr_edge.validate.outcome import Check, Outcome
    from cr_edge.validate.tolerances import POLICY
    from cr_edge.validate.validator import RuntimeResult

    tol = POLICY["fp16"]
    check = Check("y", (4, 10), status == "PASS", "atol=0.01 rtol=0.01", err, err)
    outputs = Outcome(status, f"max abs {err}", [check])
    none = Outcome.unavailable("not measured")
    return RuntimeResult(str(artifact), runtime, str(artifact), outputs, none, none, tol)


def test_validate_on_says_by_how_much_and_why_a_device_disagrees(tmp_path: Path):
    """The rows validate --on prints: an fp16 model passes here and fails on a core with
    fp16 arithmetic; the line gives both errors, the tolerance and the feature."""
    w16 = helper.make_tensor("w", TensorProto.FLOAT16, [4, 4], [0] * 16)
    fp16 = _graph([helper.make_node("MatMul", ["x", "w"], ["y"])], [w16], TensorProto.FLOAT16)
    path = tmp_path / "model.fp16.onnx"
    onnx.save(fp16, path)
    rows = [
        _row(path, "cpu", "PASS", 0.0071),
        _row(path, "cpu@a72", "PASS", 0.0072),  # agrees: no line
        _row(path, "cpu@n1", "FAIL", 0.037),
    ]
    devices = {"a72": {"fingerprint": A72}, "n1": {"fingerprint": N1}}
    lines = diagnosis.disagreements(rows, devices)
    assert len(lines) == 1 and lines[0].startswith("@n1 outputs: error 0.037 there (5.2x)")
    assert "0.0071 here, tolerance 0.01 + 0.01|y|" in lines[0] and "fp16 arithmetic" in lines[0]


def test_auto_without_root_certifies_nothing_and_the_summary_says_why(monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    devices, note = resolve("auto")
    assert devices == [] and "needs root" in note and "neoverse-n1" in note
    assert summary_lines({"on": [], "note": note, "chosen": {}, "refused": {}}) == [f"- {note}"]


def test_certify_on_none_and_an_unknown_name(device_home: Path):
    from cr_edge.errors import InputError

    assert resolve("none") == ([], "")
    assert resolve(None) == ([], "")
    with pytest.raises(InputError, match="no device named 'nowhere'"):
        resolve("nowhere")
    with pytest.raises(InputError, match="give auto, none, or device names"):
        resolve("auto,nowhere")


# --- the hook inside quantize ---------------------------------------------------------


class _Fabricated:
    """A certifier whose device fails the first candidate it is asked about (auto's best
    here) and passes the rest, or fails everything; it records what it was handed."""

    def __init__(self, fail_all: bool = False) -> None:
        self.devices = ["phone"]
        self.first_only = False
        self.fail_all = fail_all
        self.seen: list[CandidateFiles] = []

    def __call__(self, candidate: CandidateFiles) -> list[DeviceVerdict]:
        assert candidate.model.is_file() and candidate.oracle.is_file()
        assert candidate.companion is None or candidate.companion.is_file()
        self.seen.append(candidate)
        fails = self.fail_all or len(self.seen) == 1
        err = 0.05 if fails else 0.001
        return [
            DeviceVerdict("phone", not fails, "outputs", 0.004, err, 0.01, "fabricated", "", N1)
        ]


# The latency cap is not what these test: this CPU's timings decide how many candidates are
# within it, and the certification needs two that qualify here.
ANY_SPEED = {"max_latency_ratio": 1000.0}


@pytest.mark.slow  # an auto quantize: ~17 s
def test_auto_never_keeps_a_candidate_a_device_fails(exported: Path, tmp_path: Path):
    hook = _Fabricated()
    result = quantize(exported / "model.onnx", QuantConfig(tmp_path / "q", **ANY_SPEED), hook)
    assert len(hook.seen) >= 2, "needs two candidates that pass here"
    refused = next(t for t in result.tried if t.policy.label == hook.seen[0].label)
    assert not refused.passed and "@phone" in refused.why and "0.05" in refused.why
    assert result.chosen is not None and result.chosen is not refused
    assert all(v.passed for v in result.chosen.devices.values())
    assert result.chosen.policy.label in {c.label for c in hook.seen[1:]}
    record = json.loads((tmp_path / "q" / "quantize.json").read_text())
    assert record["certified_on"] == ["phone"]
    row = next(t for t in record["tried"] if t["label"] == refused.policy.label)
    assert row["devices"]["phone"]["passed"] is False
    assert row["devices"]["phone"]["fingerprint"] == N1
    assert row["devices"]["phone"]["error_over_tolerance"] == pytest.approx(5.0)
    # what the pipeline's summary says: the kept model's figures, and who refused what
    lines = summary_lines(summary_entry(result, ""))
    assert lines[0].startswith("- certified on @phone (neoverse-n1 (qemu)): outputs error")
    assert any(f"{refused.policy.label} not kept: fails on @phone" in ln for ln in lines)


@pytest.mark.slow  # an auto quantize: ~17 s
def test_auto_keeps_fp32_when_the_device_fails_every_candidate(exported: Path, tmp_path: Path):
    hook = _Fabricated(fail_all=True)
    result = quantize(exported / "model.onnx", QuantConfig(tmp_path / "q", **ANY_SPEED), hook)
    assert hook.seen and result.chosen is None and "onnx" not in result.files


# --- for real, on an exec device ------------------------------------------------------


def test_a_candidate_that_passes_here_and_there_is_kept(
    exec_device: Device, exported: Path, tmp_path: Path, cli_run
):
    out = tmp_path / "q"
    done = cli_run("quantize", exported / "model.onnx", "--out", out, "--mode", "w8",
                   "--certify-on", "here")  # fmt: skip
    assert done.exit_code == 0, done.output
    assert "@here" in done.output
    record = json.loads((out / "quantize.json").read_text())
    verdict = record["tried"][0]["devices"]["here"]
    assert verdict["passed"] and record["chosen"] == "w8"
    # the same Python on both sides: the same error, below the tolerance
    assert verdict["device_error"] == pytest.approx(verdict["host_error"], rel=1e-6)
    assert verdict["device_error"] <= verdict["tolerance"]
    assert verdict["cause"] is None and verdict["fingerprint"]["python_path"]
    assert (out / "model.w8.onnx").is_file()


@pytest.mark.slow  # an auto quantize: ~17 s
def test_certify_with_auto_stops_at_the_first_that_passes_everywhere(
    exec_device: Device, exported: Path, tmp_path: Path
):
    hook = DeviceCertifier([exec_device], first_only=True)
    result = quantize(exported / "model.onnx", QuantConfig(tmp_path / "q"), hook)
    certified = [t for t in result.tried if t.devices]
    assert result.chosen is not None and certified == [result.chosen]
    assert result.chosen.devices["here"].passed


# --- slow: the emulated Neoverse-N1 ---------------------------------------------------


@pytest.mark.slow
def test_auto_certified_on_emulated_neoverse_n1_keeps_a_model_that_passes_there(
    trained_root: Path, tmp_path: Path, device_home: Path, emulated_arm64: Path
):
    from trained import checkpoint, exported

    from cr_edge.export.exporter import ExportOptions

    model = exported(trained_root, "digits-cr", "default-options", ExportOptions()).files["onnx"]
    calib = checkpoint(trained_root, "digits-cr") / "calib.npz"
    n1 = Device("n1", "emulated:arm64/neoverse-n1")
    hook = DeviceCertifier([n1], first_only=True)
    result = quantize(model, QuantConfig(tmp_path / "q", calib=calib), hook)
    for t in result.tried:
        if t.devices:
            print(f"{t.policy.label}: {t.devices['n1'].reason()}")
    if result.chosen is None:  # nothing passed there: fp32 kept, every certified one failed
        assert all(not v.passed for t in result.tried for v in t.devices.values())
        return
    # the property, checked independently: the written model validates on the device
    registry_device = Device("n1", "emulated:arm64/neoverse-n1")
    from cr_edge.devices import registry

    registry.add(registry_device)
    report = api.validate([result.files["onnx"]], "cpu", on="n1")
    rows = [r for r in report.results if r.runtime == "cpu@n1"]
    assert rows and all(r.outputs.status == "PASS" for r in rows), report.failures()
    assert all(r.derivatives.status != "FAIL" for r in rows)
    here = validate([result.files["onnx"]], "cpu", None, Overrides(), "auto")
    assert here.passed
