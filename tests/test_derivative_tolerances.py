"""Derivative tolerances from measured rounding (issue 24, RELIABILITY row 28).

Without a companion, an fp32 export's derivatives are judged by float32 central finite
differences. Their bound now comes from the float64 copy of the graph, as the outputs'
does: per sample, the float32 estimate against the float64 derivative, ``ROUNDING_SAFETY x``
(that + the oracle's own error), the policy's rtol 1e-3 only a floor. A sample where the
float64 estimate at the same step misses the float64 derivative has a kink within the step
(a ReLU, the guard's clip): it is skipped and counted. Before, such a kink much closer to
``x`` than the step escaped the spread test, and a correct export failed its own check
(MNIST-1D's depth-1 w512 CR net in the quick Fair Fight: rel 2.5e-3 against 1e-3).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper

from cr_edge.checkpoint import load_checkpoint
from cr_edge.export.exporter import ExportOptions, export
from cr_edge.export.oracle_writer import ReferenceNet, build_oracle, save_oracle
from cr_edge.fairfight.ladder import BUDGETS, ladder_tasks
from cr_edge.recipe import Recipe
from cr_edge.train.loop import train
from cr_edge.validate.differences import (
    finite_difference_steps,
    input_scale,
    relative,
    richardson,
)
from cr_edge.validate.oracle import load_oracle
from cr_edge.validate.rounding import RoundingError
from cr_edge.validate.tolerances import Overrides, tolerances_for
from cr_edge.validate.validator import cpu_parity

PLANTED = 6  # oracle samples moved next to a ReLU kink


def _validate(cli_run, model: Path, tmp_path: Path, *args: str) -> tuple[int, dict]:
    report = tmp_path / f"{model.parent.name}-{len(args)}.json"
    result = cli_run("validate", model, "--runtime", "cpu", "--json", report, *args)
    return result.exit_code, json.loads(report.read_text())["results"][0]


def _scaled(src: Path, out: Path, name_end: str, factor: float) -> Path:
    """A copy of the export folder ``src`` with every initializer of ``src/model*.onnx``
    whose name ends in ``name_end`` scaled by ``factor`` (a 1% corruption: 1.01)."""
    shutil.copytree(src, out)
    (out / "manifest.json").unlink(missing_ok=True)  # hand-edited: no export's verdict
    for path in out.glob("*.onnx"):
        model = onnx.load(path)
        hits = [t for t in model.graph.initializer if t.name.endswith(name_end)]
        for t in hits:
            t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t) * factor, t.name))
        if hits:
            onnx.save(model, path)
    return out / "model.onnx"


def test_the_bound_is_measured_and_kinks_are_skipped_on_hand_made_figures():
    y = np.zeros((3, 2), np.float32)
    # sample 1's float64 estimate misses its derivative by 5e-3 > 1e-3: a kink, skipped;
    # the others need 2 x (max(1e-4 + 1e-9, 5e-5 + 3e-4) + 1e-5) = 7.2e-4: the floor holds
    quiet = RoundingError(1e-7, None, np.array([1e-4, 2e-4, 5e-5]), np.array([1e-9, 5e-3, 3e-4]))
    tol = tolerances_for({}, "m", y, None, rounding=quiet, oracle_error=(0.0, 1e-5))
    assert tol.finite_differences.rtol == 1e-3 and tol.kinked_samples == (1,)
    assert tol.kinked(3).tolist() == [False, True, False]
    # rounding 6e-4 on sample 0: 2 x (6e-4 + 1e-9 + 1e-5) = 1.220002e-3 raises it
    loud = RoundingError(1e-7, None, np.array([6e-4, 2e-4]), np.array([1e-9, 1e-9]))
    tol = tolerances_for({}, "m", y[:2], None, rounding=loud, oracle_error=(0.0, 1e-5))
    assert tol.finite_differences.rtol == pytest.approx(1.220002e-3)
    assert tol.finite_differences.min_cosine == 0.999 and tol.kinked_samples == ()
    assert "float64 copy's derivative" in tol.sources["finite_differences"]
    assert tol.to_json()["kinked_samples"] == 0
    # --deriv-rtol still wins
    forced = tolerances_for({}, "m", y[:2], None, Overrides(deriv_rtol=1e-3), loud, (0.0, 1e-5))
    assert forced.finite_differences.rtol == 1e-3


@pytest.fixture(scope="module")
def relu_kinks(tmp_path_factory) -> Path:
    """A ReLU MLP exported without a companion, its oracle's first PLANTED samples moved
    so that a hidden unit's pre-activation sits 1/10000 of the step from its kink."""
    root = tmp_path_factory.mktemp("relu")
    # wine's 13 features and 2 units: few samples have a kink within the step by chance, so
    # finite differences resolve over 90% of them (else the check is unavailable)
    recipe = Recipe(
        name="relu", data="wine", activation="relu", hidden=(2,), epochs=2, dreg_lambda=0.0
    )
    train(recipe, root / "ck")
    out = root / "export"
    export(root / "ck", out, ExportOptions(companion=False))
    ckpt = load_checkpoint(root / "ck")
    oracle = load_oracle(out / "model.ref.npz")
    x, v = oracle.x.astype(np.float64), oracle.v.astype(np.float64)
    linear = next(m for m in ckpt.net.modules() if isinstance(m, torch.nn.Linear))
    w = linear.weight.detach().double().numpy()
    b = linear.bias.detach().double().numpy()
    mean = np.asarray(ckpt.normalisation.mean, np.float64).reshape(-1)
    std = np.asarray(ckpt.normalisation.std, np.float64).reshape(-1)
    steps = finite_difference_steps(oracle.x, oracle.v, "fp32", input_scale(oracle.x))
    moved = x.copy()
    for i in range(PLANTED):
        xi, vi = x[i].reshape(-1), v[i].reshape(-1)  # the MLP flattens its input
        z = w @ ((xi - mean) / std) + b
        grad = w / std  # dz/dx, one row per unit
        j = int(np.argmax(np.abs(grad @ vi)))  # the unit the direction crosses fastest
        target = 1e-4 * steps[i] * (grad[j] @ vi)  # 1/10000 of the step from the kink
        moved[i] = (xi + (target - z[j]) * grad[j] / (grad[j] @ grad[j])).reshape(x[i].shape)
    ref = ReferenceNet(ckpt, None)
    calib = ckpt.calib()
    save_oracle(out / "model.ref.npz", build_oracle(ref, moved.astype(np.float32)), calib)
    (out / "manifest.json").unlink()  # the oracle was rewritten: not the export's own folder
    return out


def test_a_kink_much_closer_than_the_step_is_skipped_not_failed(cli_run, relu_kinks, tmp_path):
    model = relu_kinks / "model.onnx"
    oracle = load_oracle(relu_kinks / "model.ref.npz")
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    steps = finite_difference_steps(oracle.x, oracle.v, "fp32", input_scale(oracle.x))
    jvp, spread = richardson(
        lambda p: session.run(None, {"x": p})[0], oracle.x, oracle.v.astype(np.float32), steps
    )
    err = relative(jvp, oracle.jvp)
    # planted samples that pass the spread test, yet whose estimate is no derivative
    escaped = np.flatnonzero((spread[:PLANTED] < 1e-3) & (err[:PLANTED] > 1e-2))
    assert escaped.size >= PLANTED // 2
    (result,) = cpu_parity(model).results
    assert set(escaped) <= set(result.tolerances.kinked_samples)
    code, row = _validate(cli_run, model, tmp_path)
    assert code == 0 and row["derivatives"]["status"] == "PASS", row["derivatives"]
    assert row["derivatives"]["figures"]["unresolved_samples"] >= escaped.size
    assert "kink within the step" in row["tolerances"]["sources"]["finite_differences"]


def test_a_one_percent_corrupted_companion_still_fails(cli_run, exported, tmp_path):
    cr_export = exported  # conftest's session export: a small CR net, guard and companion
    model = cr_export / "model.onnx"
    companion = onnx.load(cr_export / "model.jvp.onnx")
    names = [t.name for t in companion.graph.initializer if t.name.split(".")[-1][:1] == "c"]
    assert names, "the companion holds polynomial coefficients"
    code, row = _validate(cli_run, model, tmp_path)
    assert code == 0 and row["derivatives"]["figures"]["method"] == "companion"
    check = json.loads((cr_export / "manifest.json").read_text())["export_check"]
    assert check["state"] == "passed" and set(check["tolerances"]) >= {"atol", "derivatives"}
    # 1% on one coefficient tensor of the companion only: outputs pass, derivatives fail
    for name in sorted(set(names)):
        bad = tmp_path / f"bad-{name}"
        shutil.copytree(cr_export, bad)
        (bad / "manifest.json").unlink()
        c = onnx.load(bad / "model.jvp.onnx")
        t = next(t for t in c.graph.initializer if t.name == name)
        t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t) * 1.01, t.name))
        onnx.save(c, bad / "model.jvp.onnx")
        code, row = _validate(cli_run, bad / "model.onnx", tmp_path)
        assert code == 1 and row["derivatives"]["status"] == "FAIL", name
        assert row["outputs"]["status"] == "PASS", name


def test_a_one_percent_corruption_fails_finite_differences_too(cli_run, exported, tmp_path):
    plain = tmp_path / "plain"
    shutil.copytree(exported, plain)
    (plain / "model.jvp.onnx").unlink()  # no companion: finite differences judge
    (plain / "manifest.json").unlink()
    code, row = _validate(cli_run, plain / "model.onnx", tmp_path)
    assert code == 0 and row["derivatives"]["figures"]["method"] == "finite-differences"
    model = onnx.load(plain / "model.onnx")
    names = sorted({t.name for t in model.graph.initializer if t.name.split(".")[-1][:1] == "c"})
    for name in names:
        bad = _scaled(plain, tmp_path / f"bad-{name}", name, 1.01)
        code, row = _validate(cli_run, bad, tmp_path)
        assert code == 1 and row["derivatives"]["status"] == "FAIL", (name, row["derivatives"])


@pytest.mark.slow
def test_the_quick_fights_cr_pair_passes_its_own_check(tmp_path):
    """The export that failed its own check in ``fairfight --data mnist1d --budget quick``:
    the latency pair's CR net (depth 1, width 512), exported without a companion."""
    task = next(
        t
        for t in ladder_tasks("mnist1d", BUDGETS["quick"], ("depth1",), {})
        if (t.phase, t.family, t.width, t.seed) == ("ladder", "cr", 512, 0)
    )
    train(task.recipe, tmp_path / "ck", device="cpu")
    export(tmp_path / "ck", tmp_path / "ex", ExportOptions(companion=False))  # raises if failed
    check = json.loads((tmp_path / "ex" / "manifest.json").read_text())["export_check"]
    assert check["state"] == "passed"
    assert "float64 copy's derivative" in check["tolerances"]["finite_differences"]
