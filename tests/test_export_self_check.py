"""Export checks itself before it says done (issue 12, item 4).

"export exit 0, validate exit 1" was possible: export wrote whatever it lowered. Now its
last step runs validate's cpu rows against the oracle it wrote. Each test here builds an
export that is wrong in one place, as an exporter bug would make it (one polynomial
coefficient of the shipped graph 1% off; the companion's JVPs or its own y off), and
checks that export exits 1 naming the failing check, keeps the files, records the failure
in the manifest, and that validate and quantize refuse the export unless forced.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
from reliability.helpers import one_line_error

from cr_edge import api
from cr_edge.artifacts.manifest import MANIFEST
from cr_edge.errors import InputError
from cr_edge.export import exporter
from cr_edge.export.emit import JvpNet, PrimalNet
from cr_edge.export.self_check import SelfCheckFailed
from cr_edge.export.stages import Poly
from cr_edge.quantize.policy import QuantConfig


def _one_coefficient_off(stages, *args, **kwargs) -> PrimalNet:
    """The shipped graph with one coefficient (linear term, channel 0) 1% off; the oracle is not."""
    stages = copy.deepcopy(stages)
    poly = next(s for s in stages if isinstance(s, Poly))
    poly.coeffs[1, 0] *= 1.01
    return PrimalNet(stages, *args, **kwargs)


class _JvpOff(JvpNet):
    """A companion whose JVPs are 1% too long: y right, every direction right."""

    def forward(self, x, v):
        y, jvp = super().forward(x, v)
        return y, jvp * 1.01


class _CompanionYOff(JvpNet):
    """A companion whose own y is off by 1e-3 while its JVPs are right."""

    def forward(self, x, v):
        y, jvp = super().forward(x, v)
        return y + 1e-3, jvp


def _check(folder: Path) -> dict:
    return json.loads((folder / MANIFEST).read_text())["export_check"]


def test_a_correct_export_records_that_it_passed_its_own_check(exported):
    check = _check(exported)
    assert check["state"] == "passed" and check["runtime"] == "cpu"


def test_a_wrong_export_exits_1_and_validate_and_quantize_refuse_it_unless_forced(
    cli_run, checkpoint, tmp_path, monkeypatch
):
    monkeypatch.setattr(exporter, "PrimalNet", _one_coefficient_off)
    out = tmp_path / "export"
    result = cli_run("export", checkpoint, "--out", out)
    assert result.exit_code == 1, result.output
    line = one_line_error(result)
    assert "failed its own cpu parity check (outputs)" in line, line
    assert "FAIL " in result.output and "[cpu] outputs: y" in result.output  # the report
    for name in ("model.onnx", "model.jvp.onnx", "model.ref.npz"):
        assert (out / name).is_file(), f"{name} should stay for inspection"
    check = _check(out)
    assert check["state"] == "failed" and check["failed"] == ["outputs"], check

    refused = cli_run("validate", out / "model.onnx", "--runtime", "cpu")
    assert refused.exit_code == 2, refused.output
    assert (
        "failed its own cpu parity check (outputs): fix the model or pass --accept-failed-export"
        in (one_line_error(refused))
    )
    quantized = cli_run("quantize", out / "model.onnx", "--out", tmp_path / "q")
    assert quantized.exit_code == 2, quantized.output
    assert "failed its own cpu parity check (outputs)" in one_line_error(quantized)
    assert not (tmp_path / "q").exists()
    with pytest.raises(InputError, match=r"cpu parity check \(outputs\)"):
        api.validate([out / "model.onnx"], "cpu")
    with pytest.raises(InputError, match=r"cpu parity check \(outputs\)"):
        api.quantize(out / "model.onnx", QuantConfig(tmp_path / "q"))

    forced = cli_run("validate", out / "model.onnx", "--runtime", "cpu", "--accept-failed-export")
    assert forced.exit_code == 1, forced.output  # it runs, and fails on the same check
    assert "[cpu] outputs: y" in forced.output, forced.output

    monkeypatch.undo()  # the exporter fixed: a forced re-export replaces the failed one
    again = cli_run("export", checkpoint, "--out", out, "--force")
    assert again.exit_code == 0, again.output
    assert _check(out)["state"] == "passed"


def test_a_companion_with_wrong_jvps_fails_export_on_derivatives(
    cli_run, checkpoint, tmp_path, monkeypatch
):
    monkeypatch.setattr(exporter, "JvpNet", _JvpOff)
    result = cli_run("export", checkpoint, "--out", tmp_path / "export")
    assert result.exit_code == 1, result.output
    assert "failed its own cpu parity check (derivatives)" in one_line_error(result)
    assert _check(tmp_path / "export")["failed"] == ["derivatives"]


def test_api_export_raises_naming_the_companions_own_y(checkpoint, tmp_path, monkeypatch):
    monkeypatch.setattr(exporter, "JvpNet", _CompanionYOff)
    with pytest.raises(SelfCheckFailed, match=r"cpu parity check \(companion's own y\)") as e:
        api.export(checkpoint, tmp_path / "export")
    assert e.value.exit_code == 1 and not e.value.result.check.passed
    assert _check(tmp_path / "export")["failed"] == ["companion's own y"]


def test_the_pipeline_stops_at_a_failed_export_and_says_so(cli_run, tmp_path, monkeypatch):
    monkeypatch.setattr(exporter, "PrimalNet", _one_coefficient_off)
    out = tmp_path / "run"
    args = ["pipeline", "--recipe", "digits-cr", "--epochs", "1", "--runtime", "cpu"]
    result = cli_run(*args, "--out", out)
    assert result.exit_code == 1, result.output
    assert "export:" in one_line_error(result) and "(outputs)" in result.output
    summary = json.loads((out / "summary.json").read_text())
    assert not summary["passed"] and "stopped before quantize" in summary["failures"][0]
    assert "verdict: FAIL: export:" in (out / "summary.md").read_text()
    assert not (out / "quantized").exists() and not (out / "validate.json").exists()
