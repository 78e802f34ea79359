"""Regression and ordinal heads: metrics by hand, rank consistency, and the whole chain
train -> export -> validate (and quantize) on the built-in diabetes and anes96 sets."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from click.testing import CliRunner
from onnx import numpy_helper

from cr_edge.checkpoint import load_checkpoint
from cr_edge.cli import cli
from cr_edge.heads import OrdinalThresholds, ordinal_outputs
from cr_edge.task_metrics import quadratic_weighted_kappa, r2, task_metrics


def _run(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def test_quadratic_weighted_kappa_by_hand():
    t = np.array([0, 1, 2, 2])
    assert quadratic_weighted_kappa(t, t, 3) == pytest.approx(1.0)
    # pred [0, 2, 2, 2]: observed disagreement sum w = 1/4 (one 1->2 miss, weight 1/4);
    # expected: row sums (1,1,2), column sums (1,0,3) / 4, weights (i-j)^2/4.
    rows, cols = np.array([1, 1, 2]), np.array([1, 0, 3])
    w = (np.subtract.outer(np.arange(3), np.arange(3)) ** 2) / 4
    expected = np.sum(w * np.outer(rows, cols) / 4)
    got = quadratic_weighted_kappa(np.array([0, 2, 2, 2]), t, 3)
    assert got == pytest.approx(1 - 0.25 / expected)


def test_regression_metrics_by_hand():
    m = task_metrics("regress", np.array([1.0, 2.0, 5.0]), np.array([1.0, 3.0, 3.0]), 0)
    assert m["mae"] == pytest.approx(1.0)
    assert m["rmse"] == pytest.approx(np.sqrt(5 / 3))
    assert r2(np.full(3, 7 / 3), np.array([1.0, 3.0, 3.0])) == pytest.approx(0.0)


def test_ordinal_head_is_rank_consistent_for_any_weights():
    torch.manual_seed(0)
    head = OrdinalThresholds(6)
    with torch.no_grad():
        head.gaps.normal_(0, 5)  # any parameters, not only trained ones
        head.first.normal_(0, 5)
    c = head(torch.randn(256, 1) * 10)
    above = torch.sigmoid(c)
    assert (above[:, 1:] <= above[:, :-1]).all()
    probs, rank = ordinal_outputs(c)
    assert (probs >= 0).all()
    assert torch.allclose(probs.sum(1), torch.ones(256), atol=1e-6)
    ks = torch.arange(6, dtype=probs.dtype)
    assert torch.allclose(rank[:, 0], probs @ ks, atol=1e-5)


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("tasks")
    out = {}
    for task, data in (("regress", "diabetes"), ("ordinal", "anes96")):
        ckpt, exp = base / f"{task}-ckpt", base / f"{task}-export"
        r = _run("train", "--data", data, "--task", task, "--epochs", "8", "--out", str(ckpt))
        assert r.exit_code == 0, r.output
        r = _run("export", str(ckpt), "--out", str(exp))
        assert r.exit_code == 0, r.output
        out[task], out[f"{task}-ckpt"] = exp, ckpt
    return out


def _metadata(path: Path) -> dict[str, str]:
    return {p.key: p.value for p in onnx.load(path).metadata_props}


def test_regression_export_returns_target_units(exported):
    ckpt = load_checkpoint(exported["regress-ckpt"])
    meta = _metadata(exported["regress"] / "model.onnx")
    assert meta["cr_edge.task"] == "regress"
    assert set(json.loads(meta["cr_edge.outputs"])) == {"y"}
    scale = json.loads(meta["cr_edge.target_normalisation"])
    assert scale["std"] > 1  # diabetes targets span ~25..346: far from unit scale
    calib = ckpt.calib()
    x = calib["x_test"]
    (y,) = ort.InferenceSession(exported["regress"] / "model.onnx").run(None, {"x": x})
    with torch.no_grad():
        z = ckpt.net(torch.from_numpy(ckpt.normalisation.apply(x))).numpy()
    np.testing.assert_allclose(y, z * scale["std"] + scale["mean"], rtol=1e-4, atol=1e-3)
    mae = float(np.mean(np.abs(y[:, 0] - calib["t_test"])))
    assert mae == pytest.approx(ckpt.metrics["test_mae"], rel=1e-3)


def test_ordinal_export_outputs_probabilities_and_rank(exported):
    meta = _metadata(exported["ordinal"] / "model.onnx")
    assert meta["cr_edge.task"] == "ordinal"
    assert list(json.loads(meta["cr_edge.outputs"])) == ["y", "rank"]
    assert len(json.loads(meta["cr_edge.labels"])) == 7
    sess = ort.InferenceSession(exported["ordinal"] / "model.onnx")
    oracle = np.load(exported["ordinal"] / "model.ref.npz")
    probs, rank = sess.run(None, {"x": oracle["x"]})
    assert probs.shape == (len(oracle["x"]), 7) and rank.shape == (len(oracle["x"]), 1)
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)
    np.testing.assert_allclose(rank[:, 0], probs @ np.arange(7), atol=1e-4)


@pytest.mark.parametrize("task", ["regress", "ordinal"])
def test_validate_passes_and_catches_a_corrupted_head(exported, task, tmp_path):
    model = exported[task] / "model.onnx"
    r = _run("validate", str(model), "--runtime", "cpu")
    assert r.exit_code == 0, r.output
    bad = tmp_path / "bad"  # no manifest: the copy is a user's edited model, not an export
    bad.mkdir()
    for name in ("model.onnx", "model.jvp.onnx", "model.ref.npz"):
        shutil.copy(exported[task] / name, bad / name)
    for name in ("model.onnx", "model.jvp.onnx"):  # the last layer's weights, 1% larger
        m = onnx.load(bad / name)
        gemm = [n for n in m.graph.node if n.op_type == "Gemm"][-1]
        for init in m.graph.initializer:
            if init.name == gemm.input[1]:
                arr = numpy_helper.to_array(init) * 1.01
                init.CopyFrom(numpy_helper.from_array(arr, init.name))
        onnx.save(m, bad / name)
    r = _run("validate", str(bad / "model.onnx"), "--runtime", "cpu")
    assert r.exit_code == 1, r.output


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--data", "digits", "--task", "regress"], "for --task classify or ordinal"),
        (["--data", "diabetes"], "for --task regress"),
    ],
)
def test_task_mismatch_is_one_line_exit_2(tmp_path, args, words):
    r = CliRunner().invoke(cli, ["train", *args, "--epochs", "1", "--out", str(tmp_path / "c")])
    assert r.exit_code == 2 and words in r.output, r.output


def test_ordinal_csv_needs_numeric_labels(tmp_path):
    csv = tmp_path / "r.csv"
    csv.write_text("a,stars\n1,good\n2,bad\n3,good\n")
    r = CliRunner().invoke(
        cli,
        [
            "train",
            "--data",
            str(csv),
            "--label",
            "stars",
            "--task",
            "ordinal",
            "--out",
            str(tmp_path / "c"),
        ],
    )
    assert r.exit_code == 2 and "r.csv" in r.output and "not a number" in r.output, r.output
