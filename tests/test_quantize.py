"""`cr-edge quantize`: per-recipe int8 parity and accuracy, fp16, the graph passes, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from cr_edge.data import BUILTINS
from cr_edge.errors import CheckFailed
from cr_edge.export.exporter import ExportOptions, export
from cr_edge.quantize.calibration import feeds_for
from cr_edge.quantize.companion import derivative_only
from cr_edge.quantize.equalize import equalize
from cr_edge.quantize.gemm_to_matmul import gemm_to_matmul
from cr_edge.quantize.interval import chain_ranges
from cr_edge.quantize.measure import session
from cr_edge.quantize.policy import (
    LATENCY_TIE,
    MAX_LATENCY_RATIO,
    QuantConfig,
    QuantPolicy,
    auto_candidates,
)
from cr_edge.quantize.quantizer import qualifies, quantize
from cr_edge.recipe import load_recipe, zoo_names
from cr_edge.runtimes.registry import get_runtime
from cr_edge.runtimes.safe_load import check_artifact
from cr_edge.train.loop import train
from cr_edge.validate.tolerances import SECANT_MIN_COSINE
from cr_edge.validate.validator import validate

DEQUANTIZE_KEY = "cr_edge.quant.dequantize_at_load"
# Early stopping settles digits-cr by epoch ~20 (the same checkpoint as the full 60); at
# 12 epochs its int8 JVP cosine is only 0.95 on a few oracle samples. The rest train 10.
EPOCHS = {"digits-cr": 20}
# Recipes whose data ships with an installed package (yelp-full-cr reads a file you fetch).
RECIPES = [n for n in zoo_names() if load_recipe(n).data in BUILTINS]
POLY = [n for n in RECIPES if load_recipe(n).activation == "poly"]
BASELINES = [n for n in RECIPES if n not in POLY]


@pytest.fixture(scope="module")
def zoo(tmp_path_factory) -> dict[str, tuple[Path, Path]]:
    """Every zoo recipe, briefly trained and exported: name -> (checkpoint, export folder)."""
    root = tmp_path_factory.mktemp("zoo")
    made = {}
    for name in RECIPES:
        ck, ex = root / name / "ck", root / name / "ex"
        train(load_recipe(name).replace(epochs=EPOCHS.get(name, 10)), ck, device="cpu")
        export(ck, ex)
        made[name] = (ck, ex)
    return made


# A ReLU net's JVP flips wherever int8 (or fp16) weights move a kink across a sample,
# so no candidate holds the derivative tolerance there and auto keeps fp32 (digits-relu).
SMOOTH = [n for n in RECIPES if load_recipe(n).activation != "relu"]
# The digits classifiers must get a quantized model. The one-score heads (regression,
# ordinal) of the zoo are a few thousand bytes: int8 scales and zero points can outweigh what
# int8 weights save, and fp16 can overflow, so there auto may honestly keep fp32 (measured:
# diabetes-cr keeps w8, anes96-cr keeps fp32 with every passing candidate larger than fp32).
# breast-cancer-cr's w8 primal secant sits on the 0.99 line: over seeds 0-3 it read 0.99,
# 0.94, 0.997, 0.998 (monomial form) and 0.976, 0.995, 0.971, 0.995 (depressed), so either
# outcome is honest there, and the test holds auto to its properties or to its reasons.
MUST_QUANTIZE = [
    n for n in SMOOTH if load_recipe(n).task == "classify" and load_recipe(n).data == "digits"
]


@pytest.mark.parametrize("name", SMOOTH)
def test_auto_keeps_a_smaller_model_within_the_cap_that_passes_every_way(zoo, name, tmp_path):
    ck, ex = zoo[name]
    result = quantize(
        ex / "model.onnx", QuantConfig(tmp_path, QuantPolicy("auto"), ck / "calib.npz")
    )
    written = json.loads((tmp_path / "quantize.json").read_text())
    assert len(written["tried"]) == len(auto_candidates(QuantPolicy()))
    if result.chosen is None and name not in MUST_QUANTIZE:
        _assert_kept_fp32_honestly(result, tmp_path)
        return
    chosen = result.chosen
    _assert_auto_properties(result)
    assert result.files["onnx"].name == f"model.{chosen.policy.tag}.onnx"
    assert written["policy"] == chosen.policy.tag
    assert written["precision"] == chosen.policy.precision
    meta = {p.key: p.value for p in onnx.load(result.files["jvp"]).metadata_props}
    assert meta["cr_edge.precision"] == chosen.policy.precision


def _assert_kept_fp32_honestly(result, out: Path) -> None:
    """fp32 kept: nothing written but the report, and each candidate says why not it."""
    assert "kept fp32" in result.notes[-1] and not list(out.glob("*.onnx"))
    for t in result.tried:
        why = qualifies(t, result.fp32_bytes, MAX_LATENCY_RATIO)
        assert why is not None and why in t.why, (t.policy.label, t.why)


def _assert_auto_properties(result) -> None:
    """Auto's choice: smaller than fp32, within the cap, passing every way and the secant."""
    chosen = result.chosen
    assert chosen is not None, result.notes
    assert chosen.bytes < result.fp32_bytes
    first = chosen.latency[min(chosen.latency)]  # not slower than fp32, within a tie
    assert first["ratio"] <= MAX_LATENCY_RATIO + LATENCY_TIE
    assert first["ratio_p10"] <= MAX_LATENCY_RATIO
    assert {"onnxruntime b64", "onnxruntime b1"} <= {w.name for w in chosen.ways}
    assert any(w.name.startswith("exact") for w in chosen.ways)
    assert chosen.passed and all(w.parity.ok for w in chosen.ways), chosen.why
    # the secant judges int8 only: over int8 input steps, fp16's measures its output rounding
    if chosen.policy.precision == "int8":
        assert chosen.secant_cos is not None and chosen.secant_cos >= SECANT_MIN_COSINE
    if chosen.accuracy is not None:  # regression: parity is the measure
        assert result.fp32_accuracy - chosen.accuracy <= 0.005
    report = validate([result.files["onnx"]], "cpu")
    assert report.passed, report.failures()


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_auto_holds_on_other_digits_cr_seeds(tmp_path, seed):
    """Seed 0 is the zoo's; the properties must not hang on one training run. Another seed
    may keep fp32 (seed 2's w8 secant measured 0.987 against 0.99), but then with its reasons."""
    recipe = load_recipe("digits-cr").replace(epochs=EPOCHS["digits-cr"], seed=seed)
    train(recipe, tmp_path / "ck", device="cpu")
    export(tmp_path / "ck", tmp_path / "ex")
    config = QuantConfig(tmp_path / "q", QuantPolicy("auto"), tmp_path / "ck" / "calib.npz")
    result = quantize(tmp_path / "ex" / "model.onnx", config)
    if result.chosen is None:
        _assert_kept_fp32_honestly(result, tmp_path / "q")
    else:
        _assert_auto_properties(result)


def test_when_nothing_qualifies_auto_keeps_fp32_writes_no_model_and_require_fails(zoo, tmp_path):
    """A cap no candidate can meet (0.01x fp32's latency) stands in for a CPU where none does."""
    ck, ex = zoo["breast-cancer-cr"]
    config = QuantConfig(
        tmp_path / "a", QuantPolicy("auto"), ck / "calib.npz", max_latency_ratio=0.01
    )
    result = quantize(ex / "model.onnx", config)
    assert result.chosen is None and "kept fp32" in result.notes[-1]
    assert not list((tmp_path / "a").glob("*.onnx"))
    assert json.loads((tmp_path / "a" / "quantize.json").read_text())["precision"] == "fp32"
    strict = QuantConfig(
        tmp_path / "b", config.policy, config.calib, require=True, max_latency_ratio=0.01
    )
    with pytest.raises(CheckFailed, match=r"kept fp32.*--require"):
        quantize(ex / "model.onnx", strict)
    assert not (tmp_path / "b").exists() or not list((tmp_path / "b").iterdir())


@pytest.mark.parametrize("name", BASELINES)
def test_baselines_keep_accuracy_and_outputs_under_dynamic_int8(zoo, name, tmp_path):
    """A ReLU net's derivative jumps where int8 weights move a kink, so only outputs are held."""
    ck, ex = zoo[name]
    result = quantize(
        ex / "model.onnx", QuantConfig(tmp_path, QuantPolicy("dynamic"), ck / "calib.npz")
    )
    t = result.chosen
    assert result.fp32_accuracy - t.accuracy <= 0.005 and t.parity.outputs_ok
    print(f"{name}: dynamic int8 jvp cos {t.parity.jvp_min_cos:.3f} ({t.why})")


def test_fp16_keeps_outputs_and_derivatives(zoo, tmp_path):
    ck, ex = zoo["digits-cr"]
    result = quantize(
        ex / "model.onnx", QuantConfig(tmp_path, QuantPolicy("fp16"), ck / "calib.npz")
    )
    par = result.chosen.parity
    assert par.precision == "fp16" and par.outputs_ok and par.jvp_min_cos >= 0.999
    assert result.files["onnx"].name == "model.fp16.onnx"
    for file in (result.files["onnx"], result.files["jvp"]):  # sorted, and its types agree
        onnx.checker.check_model(onnx.load(file), full_check=True)
    assert validate([result.files["onnx"]], "cpu").passed


def test_cli_writes_models_oracle_and_report(cli_run, zoo, tmp_path):
    ck, ex = zoo["digits-cr"]
    out = tmp_path / "q"
    args = ("--mode", "w8", "--calib", ck / "calib.npz", "--format", "onnx,ort")
    got = cli_run("quantize", ex / "model.onnx", "--out", out, *args)
    assert got.exit_code == 0, got.output
    assert "w8" in got.output and "Horner chain" in got.output
    assert {p.name for p in out.iterdir()} == {
        "model.w8.onnx",
        "model.w8.jvp.onnx",
        "model.w8.ort",
        "model.w8.jvp.ort",
        "model.w8.required_operators.config",  # what a minimal onnxruntime build must carry
        "model.ref.npz",
        "quantize.json",
        "manifest.json",
    }
    assert (out / "model.ref.npz").read_bytes() == (ex / "model.ref.npz").read_bytes()
    report = validate([out / "model.w8.onnx"], "cpu,ort-mobile")
    assert report.passed, report.failures()
    again = cli_run("quantize", ex / "model.onnx", "--out", out, "--mode", "w8")
    assert again.exit_code == 2 and "--force" in again.output


def _ops_after_load(path: Path, optimized: Path) -> set[str]:
    """The op types of ``path``'s graph as cr-edge's cpu runtime loads it (after onnxruntime's
    graph optimizations, written out by onnxruntime itself)."""
    runtime = get_runtime("cpu")
    artifact = check_artifact(path)
    options = runtime.session_options(artifact)
    options.optimized_model_filepath = str(optimized)
    runtime.create_session(artifact, options)
    return {n.op_type for n in onnx.load(optimized).graph.node}


def test_a_w8_file_becomes_float_once_at_load_not_on_every_call(zoo, tmp_path):
    """w8 records ``dequantize_at_load``; the runtime then opens it with onnxruntime's
    ``session.disable_quant_qdq``, whose constant folding leaves no DequantizeLinear to run on
    each call. The same file without the record keeps them (onnxruntime's constant folding
    skips DequantizeLinear by default), so the record is what makes the difference."""
    _, ex = zoo["digits-cr"]
    result = quantize(ex / "model.onnx", QuantConfig(tmp_path / "q", QuantPolicy("w8")))
    model = onnx.load(result.files["onnx"])
    assert {p.key: p.value for p in model.metadata_props}[DEQUANTIZE_KEY] == "true"
    assert "DequantizeLinear" in {n.op_type for n in model.graph.node}  # int8 on disk
    assert "DequantizeLinear" not in _ops_after_load(result.files["onnx"], tmp_path / "a.onnx")
    kept = [p for p in model.metadata_props if p.key != DEQUANTIZE_KEY]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    onnx.save(model, tmp_path / "unmarked.onnx")
    assert "DequantizeLinear" in _ops_after_load(tmp_path / "unmarked.onnx", tmp_path / "b.onnx")


def test_a_fixed_batch_export_is_calibrated_and_measured_in_its_batch(zoo, tmp_path):
    ck, _ = zoo["digits-cr"]
    export(ck, tmp_path / "ex", ExportOptions(fixed_batch=1))
    result = quantize(
        tmp_path / "ex" / "model.onnx",
        QuantConfig(tmp_path / "q", QuantPolicy("w8"), ck / "calib.npz"),
    )
    assert list(result.chosen.latency) == [1] and result.chosen.passed, result.chosen.why
    assert validate([result.files["onnx"]], "cpu").passed


@pytest.mark.parametrize("poly", ["int16", "int8"])
def test_static_chain_policies_run_on_cpu(zoo, tmp_path, poly):
    ck, ex = zoo["digits-cr"]
    result = quantize(
        ex / "model.onnx",
        QuantConfig(tmp_path, QuantPolicy("static", poly, "interval"), ck / "calib.npz"),
    )
    ops = {n.op_type for n in onnx.load(result.files["onnx"]).graph.node}
    assert "QuantizeLinear" in ops and result.chosen.accuracy is not None


def _bad_calib(tmp_path: Path, x: np.ndarray) -> Path:
    path = tmp_path / "bad.npz"
    np.savez(path, x=x)
    return path


@pytest.mark.parametrize(
    ("make", "words"),
    [
        (lambda x: x[:, :, :4], "shape"),
        (lambda x: x.astype(np.float64), "float32"),
        (
            lambda x: np.where(np.arange(x.size).reshape(x.shape) == 3, np.nan, x).astype(
                np.float32
            ),
            "NaN",
        ),
    ],
)
def test_bad_calibration_is_one_line_exit_2_nothing_written(cli_run, zoo, tmp_path, make, words):
    ck, ex = zoo["digits-cr"]
    x = np.load(ck / "calib.npz")["x"]
    out = tmp_path / "q"
    bad = ("--calib", _bad_calib(tmp_path, make(x)))
    got = cli_run("quantize", ex / "model.onnx", "--out", out, "--mode", "static", *bad)
    assert got.exit_code == 2 and words in got.output
    assert len(got.output.strip().splitlines()) == 1
    assert not out.exists() or not any(out.iterdir())


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--mode", "turbo"], "'--mode': 'turbo' is not one of"),
        (["--mode", "dynamic", "--chain-precision", "int8"], "needs --mode static"),
        (["--method", "magic"], "'--method': 'magic' is not one of"),
    ],
)
def test_bad_options_are_one_line_exit_2(cli_run, zoo, tmp_path, args, words):
    _, ex = zoo["digits-cr"]
    got = cli_run("quantize", ex / "model.onnx", "--out", tmp_path / "q", *args)
    assert got.exit_code == 2 and words in got.output
    assert len(got.output.strip().splitlines()) == 1 and not (tmp_path / "q").exists()


def test_already_quantized_model_is_refused(cli_run, zoo, tmp_path):
    ck, ex = zoo["digits-cr"]
    first = quantize(
        ex / "model.onnx", QuantConfig(tmp_path / "a", QuantPolicy("dynamic"), ck / "calib.npz")
    )
    got = cli_run("quantize", first.files["onnx"], "--out", tmp_path / "b")
    assert got.exit_code == 2 and "already quantized" in got.output
    assert not (tmp_path / "b").exists()


def _plain_mlp(path: Path) -> Path:
    """A Gemm-Relu-Gemm model that no cr-edge export wrote (no metadata, no companion)."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(a.astype(np.float32), n)
        for n, a in [
            ("w1", rng.standard_normal((16, 8))),
            ("b1", rng.standard_normal(16)),
            ("w2", rng.standard_normal((4, 16))),
            ("b2", rng.standard_normal(4)),
        ]
    ]
    graph = helper.make_graph(
        [
            helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], name="g1", transB=1),
            helper.make_node("Relu", ["h"], ["r"], name="relu"),
            helper.make_node("Gemm", ["r", "w2", "b2"], ["y"], name="g2", transB=1),
        ],
        "plain",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4])],
        inits,
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def test_a_model_cr_edge_did_not_export_is_quantized_and_says_no_horner_chain(cli_run, tmp_path):
    model = _plain_mlp(tmp_path / "plain.onnx")
    calib = tmp_path / "calib.npz"
    np.savez(calib, x=np.random.default_rng(1).standard_normal((64, 8)).astype(np.float32))
    got = cli_run("quantize", model, "--out", tmp_path / "q", "--mode", "static", "--calib", calib)
    assert got.exit_code == 0, got.output
    assert "no Horner chain" in got.output
    assert (tmp_path / "q" / "plain.a8w7.onnx").is_file()


def test_gemm_to_matmul_and_equalize_leave_the_function_unchanged(zoo):
    ck, ex = zoo["digits-cr"]
    model = onnx.load(ex / "model.jvp.onnx")
    x = np.load(ck / "calib.npz")["x"][:64]
    feeds = feeds_for(model, x)
    ref = session(model).run(None, feeds)
    equal, scales = equalize(model, feeds)
    for changed in (gemm_to_matmul(model), equal):
        for a, b in zip(ref, session(changed).run(None, feeds), strict=True):
            np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-4 * np.abs(a).max())
    assert set(scales) == {"layers.1.weight", "layers.3.weight"}


def test_interval_ranges_bound_every_chain_tensor(zoo):
    _, ex = zoo["digits-cr"]
    model = onnx.load(ex / "model.onnx")
    ranges = chain_ranges(model)
    assert ranges, "the guarded Horner chain should be recognised"
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    probe.graph.output.extend(helper.make_empty_tensor_value_info(n) for n in ranges)
    x = np.random.default_rng(0).uniform(-3, 4, (256, 1, 8, 8)).astype(np.float32)
    outs = session(probe).run(list(ranges), {"x": x})
    for (lo, hi), got in zip(ranges.values(), outs, strict=True):
        slack = 1e-4 * max(abs(lo), abs(hi), 1.0)
        assert lo - slack <= got.min() and got.max() <= hi + slack


def test_derivative_only_nodes_are_the_v_path(zoo):
    _, ex = zoo["digits-cr"]
    companion = onnx.load(ex / "model.jvp.onnx")
    only = derivative_only(companion)
    producers = {o: n.name for n in companion.graph.node for o in n.output}
    assert producers["jvp"] in only and producers["y"] not in only
    v_users = {n.name for n in companion.graph.node if "v" in n.input}
    assert v_users <= only


def test_sensitivity_output_stays_float_and_the_model_quantizes(zoo, tmp_path):
    ck, _ = zoo["digits-cr"]
    ex = tmp_path / "ex"
    export(ck, ex, ExportOptions(sensitivity=True))
    result = quantize(ex / "model.onnx", QuantConfig(tmp_path / "q", QuantPolicy(mode="dynamic")))
    model = onnx.load(result.files["onnx"])
    assert [o.name for o in model.graph.output] == ["y", "sensitivity"]
    x = np.load(ex / "model.ref.npz")["x"]
    _, sens = session(model).run(None, {"x": x})
    assert np.isfinite(sens).all() and (sens > 0).all()
