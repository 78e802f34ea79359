"""Samples at a guard or ReLU kink of a quantized model: found, recorded, skipped, counted."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from runtime_fixtures import build_model_dir, copy_model, scale_coefficient

from cr_edge.quantize.kink_search import edges, kink_samples
from cr_edge.quantize.measure import probe
from cr_edge.quantize.policy import QuantConfig, QuantPolicy
from cr_edge.quantize.quantizer import quantize
from cr_edge.runtimes.safe_load import oracle_path
from cr_edge.validate.kink_skips import KINKS_KEY, MAX_KINKS, kinks_metadata
from cr_edge.validate.oracle import load_oracle
from cr_edge.validate.validator import validate

W = np.array([[1.0, 0.5], [0.0, 1.0]], dtype=np.float32)


def _guarded(w: np.ndarray, guard: str) -> onnx.ModelProto:
    """x @ w, then a guard on [-1, 1] (Clip or Max/Min) or a ReLU; node names fixed."""
    inits = [numpy_helper.from_array(w, "w")]
    nodes = [helper.make_node("MatMul", ["x", "w"], ["a"], name="mm")]
    if guard == "clip":
        inits += [numpy_helper.from_array(np.float32(v), n) for v, n in ((-1, "lo"), (1, "hi"))]
        nodes.append(helper.make_node("Clip", ["a", "lo", "hi"], ["y"], name="guard"))
    elif guard == "minmax":
        inits += [
            numpy_helper.from_array(np.full(2, v, np.float32), n)
            for v, n in ((-1, "lo"), (1, "hi"))
        ]
        nodes.append(helper.make_node("Max", ["a", "lo"], ["m"], name="guard"))
        nodes.append(helper.make_node("Min", ["m", "hi"], ["y"], name="guard_min"))
    else:
        nodes.append(helper.make_node("Relu", ["a"], ["y"], name="guard"))
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 2])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


@pytest.mark.parametrize("guard, bound", [("clip", 1.0), ("minmax", -1.0), ("relu", 0.0)])
def test_a_sample_at_a_bound_is_a_kink_and_samples_far_from_every_bound_are_not(guard, bound):
    fp32 = _guarded(W, guard)
    moved = _guarded(W + np.float32(0.01), guard)  # a quantized model's error, 0.01 per weight
    # channel 0 of sample 0 sits on the bound; every other pre-activation is 0.3+ from all
    x = np.array([[bound, 0.4], [0.4, -0.45], [-0.5, 0.45]], dtype=np.float32)
    at_kink, compared = kink_samples(fp32, moved, x)
    assert compared == 1
    assert at_kink.tolist() == [True, False, False]
    assert [e.node for e in edges(fp32)] == ["guard"]


def test_every_sample_whose_guard_mask_flips_is_a_kink():
    """The rule's promise, on samples the quantized error straddles a bound for."""
    fp32, moved = _guarded(W, "clip"), _guarded(W + np.float32(0.01), "clip")
    rng = np.random.default_rng(0)
    x = rng.uniform(-1.2, 1.2, size=(2000, 2)).astype(np.float32)
    a = probe(fp32, ["a"], {"x": x})["a"]
    q = probe(moved, ["a"], {"x": x})["a"]
    flips = ((np.abs(a) > 1) != (np.abs(q) > 1)).any(axis=1)
    at_kink, _ = kink_samples(fp32, moved, x)
    assert flips.sum() > 5  # the draw does straddle the bound
    assert not (flips & ~at_kink).any()
    assert at_kink.mean() < 0.1  # and the rule does not flag everything


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return build_model_dir(tmp_path_factory.getbasetemp())


def _name_kinks(folder: Path, samples: np.ndarray, oracle_path: Path | None = None) -> None:
    """Write a kink list into ``folder/model.onnx`` for ``samples`` of an oracle."""
    oracle = load_oracle(oracle_path or folder / "model.ref.npz")
    mask = np.zeros(oracle.x.shape[0], dtype=bool)
    mask[samples] = True
    model = onnx.load(folder / "model.onnx")
    for key, value in kinks_metadata(mask, oracle, "named by the test").items():
        model.metadata_props.append(onnx.StringStringEntryProto(key=key, value=value))
    onnx.save(model, folder / "model.onnx")


def _derivatives(folder: Path) -> dict:
    report = validate([folder / "model.onnx"], "cpu", derivatives="companion")
    return report.results[0].derivatives.to_json()


NAMES = ("model.onnx", "model.jvp.onnx", "model.ref.npz")


def test_named_kinks_are_skipped_and_counted_on_a_correct_model(model_dir, tmp_path):
    folder = copy_model(model_dir, tmp_path / "m", NAMES)
    _name_kinks(folder, np.array([0, 5, 9]))
    row = _derivatives(folder)
    assert row["status"] == "PASS"
    assert row["figures"]["kink_samples"] == 3
    assert "3 sample(s) at guard/ReLU kinks skipped" in row["summary"]


def test_skipping_a_few_kinks_does_not_hide_a_corrupted_companion(model_dir, tmp_path):
    folder = copy_model(model_dir, tmp_path / "m", NAMES)
    scale_coefficient(folder / "model.jvp.onnx")
    _name_kinks(folder, np.array([0, 5, 9]))
    assert _derivatives(folder)["status"] == "FAIL"


def test_over_the_cap_every_sample_is_judged_and_a_failure_says_why(model_dir, tmp_path):
    n = load_oracle(model_dir / "model.ref.npz").x.shape[0]
    every = np.arange(n)
    good = copy_model(model_dir, tmp_path / "good", NAMES)
    _name_kinks(good, every)  # a model cannot pass by being all kinks...
    row = _derivatives(good)
    assert row["status"] == "PASS" and "skipped" not in row["summary"]  # ...but may pass on all
    bad = copy_model(model_dir, tmp_path / "bad", NAMES)
    scale_coefficient(bad / "model.jvp.onnx")
    _name_kinks(bad, every)
    row = _derivatives(bad)
    assert row["status"] == "FAIL"
    assert f"{n}/{n} oracle samples at kinks" in row["summary"]
    assert f"> {MAX_KINKS:.0%}" in row["summary"]


def test_a_kink_list_made_for_another_oracle_skips_nothing(model_dir, tmp_path):
    folder = copy_model(model_dir, tmp_path / "m", NAMES)
    other = dict(np.load(folder / "model.ref.npz"))
    other["x"] = other["x"] + np.float32(1e-3)
    np.savez(tmp_path / "other.ref.npz", **other)
    _name_kinks(folder, np.array([0, 5, 9]), tmp_path / "other.ref.npz")
    row = _derivatives(folder)
    assert row["status"] == "PASS"
    assert "skipped" not in row["summary"]


def test_a_malformed_kink_list_is_one_line_exit_2(cli_run, model_dir, tmp_path):
    folder = copy_model(model_dir, tmp_path / "m", NAMES)
    model = onnx.load(folder / "model.onnx")
    model.metadata_props.append(onnx.StringStringEntryProto(key=KINKS_KEY, value="[1, 2"))
    onnx.save(model, folder / "model.onnx")
    result = cli_run("validate", folder / "model.onnx", "--runtime", "cpu")
    assert result.exit_code == 2, result.output
    assert KINKS_KEY in result.output and "re-quantize" in result.output
    assert "Traceback" not in result.output


def test_quantize_records_the_kinks_of_a_clip_guarded_export(checkpoint, exported, tmp_path):
    """The default export's Clip guard under w8: its kinks recorded, and validate skips them."""
    source = onnx.load(exported / "model.onnx")
    assert "Clip" in {n.op_type for n in source.graph.node}
    result = quantize(
        exported / "model.onnx", QuantConfig(tmp_path, QuantPolicy("w8"), checkpoint / "calib.npz")
    )
    path = result.files["onnx"]
    meta = {p.key: p.value for p in onnx.load(path).metadata_props}
    entry = json.loads(meta[KINKS_KEY])
    oracle = load_oracle(oracle_path(path))
    assert entry["of"] == oracle.x.shape[0]
    row = validate([path], "cpu", derivatives="companion").results[0].derivatives.to_json()
    assert row["figures"]["kink_samples"] == len(entry["samples"])
