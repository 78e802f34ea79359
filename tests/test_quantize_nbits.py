"""MatMulNBits policies (nb8, nb4): the exact kernel against onnxruntime, level 4's activation
rounding bounded by hand, a corrupted block scale caught by validate, the companion tied to
the primal's codes, and auto's choice judged by its properties with nb8 in the race."""

from __future__ import annotations

import shutil

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from cr_edge.errors import InputError
from cr_edge.export.exporter import export
from cr_edge.quantize.apply import apply_policy
from cr_edge.quantize.integer_eval import ReferenceSession, nbits_weight
from cr_edge.quantize.measure import session
from cr_edge.quantize.mobile_ops import beyond_mobile_package, contrib_ops, mobile_note
from cr_edge.quantize.nbits import choose_block
from cr_edge.quantize.policy import (
    LATENCY_TIE,
    MAX_LATENCY_RATIO,
    QuantConfig,
    QuantPolicy,
    auto_candidates,
)
from cr_edge.quantize.quantizer import qualifies, quantize
from cr_edge.recipe import load_recipe
from cr_edge.runtimes.safe_load import companion_of
from cr_edge.train.loop import train
from cr_edge.validate.tolerances import SECANT_MIN_COSINE
from cr_edge.validate.validator import validate

K, HIDDEN, N = 40, 24, 6  # K not a multiple of any block: the last block is padded


def _mlp(seed: int = 0) -> onnx.ModelProto:
    """x (b, K) -> Gemm(transB) -> Relu -> Gemm -> y: plain float layers for the quantizer."""
    rng = np.random.default_rng(seed)
    w1 = rng.standard_normal((HIDDEN, K)).astype(np.float32)  # transB layout
    w2 = rng.standard_normal((HIDDEN, N)).astype(np.float32)
    inits = [
        numpy_helper.from_array(w1, "w1"),
        numpy_helper.from_array(rng.standard_normal(HIDDEN).astype(np.float32), "b1"),
        numpy_helper.from_array(w2, "w2"),
        numpy_helper.from_array(rng.standard_normal(N).astype(np.float32), "b2"),
    ]
    nodes = [
        helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], name="l1", transB=1),
        helper.make_node("Relu", ["h"], ["r"], name="act"),
        helper.make_node("Gemm", ["r", "w2", "b2"], ["y"], name="l2"),
    ]
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", K])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", N])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _x(n: int = 64) -> np.ndarray:
    return np.random.default_rng(7).standard_normal((n, K)).astype(np.float32)


@pytest.mark.parametrize("mode", ["nb8", "nb4"])
@pytest.mark.parametrize("level", [0, 4])
def test_exact_matmulnbits_agrees_with_onnxruntime(mode, level):
    """The numpy kernel (integer_eval) against onnxruntime's own, on every block size.

    Level 0 differs only by float32 summation order. Level 4 quantizes each activation
    block to int8 in both; the first layer's codes are then identical, the second's can
    differ by one code where the first layer's float sums differ in the last bit, which
    moves an output by at most one activation step times the column's weights."""
    model, x = _mlp(), _x()
    for block in (16, 32, 64):
        q, _ = apply_policy(model, QuantPolicy(mode, block=block, accuracy_level=level), {"x": x})
        assert [n.op_type for n in q.graph.node].count("MatMulNBits") == 2
        ort_y = session(q).run(None, {"x": x})[0]
        exact_y = ReferenceSession(q).run({"x": x})[0]
        scale = float(np.abs(ort_y).max())
        tol = 1e-5 * scale if level == 0 else 1e-3 * scale
        assert np.abs(ort_y - exact_y).max() <= tol, (block, np.abs(ort_y - exact_y).max())


def test_level_4_moves_each_output_by_at_most_half_an_activation_step_per_weight():
    """One layer: ``|y4 - y0| <= sum_k (s_a(k) / 2) |W[k, n]|`` with ``s_a = max|a| / 127`` per
    block (the bound computed here by hand), and level 4 is not secretly level 0."""
    model = _mlp()
    first = onnx.ModelProto()
    first.CopyFrom(model)
    del first.graph.node[1:]
    first.graph.output[0].CopyFrom(
        helper.make_tensor_value_info("h", TensorProto.FLOAT, ["b", HIDDEN])
    )
    x = _x()
    block = 16
    outs = {}
    for level in (0, 4):
        q, _ = apply_policy(
            first, QuantPolicy("nb8", block=block, accuracy_level=level, equalize=False), {"x": x}
        )
        outs[level] = ReferenceSession(q).run({"x": x})[0].astype(np.float64)
        node = next(n for n in q.graph.node if n.op_type == "MatMulNBits")
        inits = {t.name: numpy_helper.to_array(t) for t in q.graph.initializer}
        codes, zero, scales = nbits_weight(
            inits[node.input[1]], inits[node.input[2]], None, K, HIDDEN, 8, block
        )
    w = (codes - np.repeat(zero, block, axis=0)[:K]) * np.repeat(scales, block, axis=0)[:K]
    pad = np.pad(np.abs(x), ((0, -K % block), (0, 0))[::-1])
    step = pad.reshape(len(x), -1, block).max(axis=2) / 127  # (n, blocks)
    bound = (np.repeat(step, block, axis=1)[:, :K] / 2) @ np.abs(w)
    diff = np.abs(outs[4] - outs[0])
    assert np.all(diff <= bound * (1 + 1e-5) + 1e-6)
    assert diff.max() > 0


def test_block_rule_takes_more_scales_only_for_half_the_error():
    """Worked by hand: from the fewest bytes (64), 32 must halve 64's error, 16 halve 32's."""
    size = {16: 400, 32: 300, 64: 250, 128: 260}  # 128 pads a short layer: more bytes than 64
    assert choose_block({16: 1.0, 32: 1.2, 64: 1.5, 128: 1.6}, size) == 64
    assert choose_block({16: 1.0, 32: 1.2, 64: 2.5, 128: 2.6}, size) == 32
    assert choose_block({16: 0.5, 32: 1.2, 64: 2.5, 128: 2.6}, size) == 16
    assert choose_block({16: 0.5, 32: 0.6, 64: 5.0, 128: 0.1}, size) == 128


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """digits-cr with a 64-wide hidden layer, briefly trained and exported (companion, oracle)."""
    root = tmp_path_factory.mktemp("nbits")
    recipe = load_recipe("digits-cr").replace(hidden=(64,), epochs=15)
    train(recipe, root / "ck", device="cpu")
    export(root / "ck", root / "ex")
    return root


def test_companion_reads_the_primal_codes(digits, tmp_path):
    """Every MatMulNBits of the companion (primal and v path) reads the codes and scales the
    primal model deploys, byte for byte; the v path computes at level 0 (straight-through)."""
    config = QuantConfig(tmp_path, QuantPolicy("nb8"), digits / "ck" / "calib.npz")
    result = quantize(digits / "ex" / "model.onnx", config)
    primal, companion = onnx.load(result.files["onnx"]), onnx.load(result.files["jvp"])
    codes = {t.name: t.raw_data for t in primal.graph.initializer}
    comp = {t.name: t.raw_data for t in companion.graph.initializer}
    nodes = [n for n in companion.graph.node if n.op_type == "MatMulNBits"]
    assert len(nodes) == 2 * sum(n.op_type == "MatMulNBits" for n in primal.graph.node)
    for node in nodes:
        for name in node.input[1:3]:
            assert comp[name] == codes[name], name
    levels = [{a.name: a.i for a in n.attribute}.get("accuracy_level", 0) for n in nodes]
    assert levels.count(0) >= len(nodes) // 2


def test_a_corrupted_block_scale_fails_validate(digits, tmp_path):
    config = QuantConfig(tmp_path / "q", QuantPolicy("nb8"), digits / "ck" / "calib.npz")
    result = quantize(digits / "ex" / "model.onnx", config)
    assert validate([result.files["onnx"]], "cpu").passed
    bad = tmp_path / "bad"
    bad.mkdir()
    for path in (result.files["onnx"], result.files["jvp"], result.files["ref"]):
        shutil.copy(path, bad / path.name)
    model = onnx.load(bad / result.files["onnx"].name)
    scales = next(t for t in model.graph.initializer if t.name.endswith("_scales"))
    values = numpy_helper.to_array(scales).copy()
    values.flat[0] *= 4.0  # one block of one column four times too coarse
    scales.CopyFrom(numpy_helper.from_array(values, scales.name))
    onnx.save(model, bad / result.files["onnx"].name)
    report = validate([bad / result.files["onnx"].name], "cpu")
    assert not report.passed


@pytest.mark.slow
def test_auto_with_nbits_in_the_race_keeps_a_smaller_passing_model_or_says_why_not(
    digits, tmp_path
):
    """Properties only: every candidate measured at batch 1 and 64, nb8 at both levels and
    nb4 tried; a kept model is smaller, within the cap, passes every way, its secant and
    accuracy, and is never 4-bit; when fp32 is kept each candidate says why not it."""
    config = QuantConfig(tmp_path, QuantPolicy("auto"), digits / "ck" / "calib.npz")
    result = quantize(digits / "ex" / "model.onnx", config)
    labels = {t.policy.label for t in result.tried}
    assert {"nb8/l4", "nb8/l0", "nb4/l4"} <= labels
    assert all(set(t.latency) == {1, 64} for t in result.tried)
    chosen = result.chosen
    if chosen is None:
        assert not list(tmp_path.glob("*.onnx"))
        assert all(qualifies(t, result.fp32_bytes, MAX_LATENCY_RATIO) for t in result.tried)
        return
    assert chosen.policy.mode != "nb4"
    assert chosen.bytes < result.fp32_bytes
    first = chosen.latency[min(chosen.latency)]  # not slower than fp32, within a tie
    assert first["ratio"] <= MAX_LATENCY_RATIO + LATENCY_TIE
    assert first["ratio_p10"] <= MAX_LATENCY_RATIO
    assert chosen.passed and all(w.parity.ok for w in chosen.ways)
    if chosen.policy.precision == "int8":
        assert chosen.secant_cos is not None and chosen.secant_cos >= SECANT_MIN_COSINE
    assert result.fp32_accuracy - chosen.accuracy <= 0.005
    assert companion_of(result.files["onnx"]).is_file()
    assert validate([result.files["onnx"]], "cpu").passed


def test_a_pinned_block_or_level_is_checked_and_reaches_every_nbits_candidate():
    assert QuantPolicy("nb8").accuracy_level == 4  # the int8 fast path unless pinned
    assert QuantPolicy("nb4", block=256, accuracy_level=0).label == "nb4/l0/b256"
    for bad, words in (
        ({"mode": "nb8", "block": 48}, "--block 48: choose 16, 32, 64, 128, 256"),
        ({"mode": "nb8", "accuracy_level": 2}, "--accuracy-level 2: choose 0 or 4"),
        ({"mode": "w8", "block": 32}, "--block needs --mode nb8, nb4 or auto"),
        ({"mode": "fp16", "accuracy_level": 0}, "--accuracy-level needs --mode nb8, nb4"),
    ):
        with pytest.raises(InputError, match=words):
            QuantPolicy(**bad)
    tried = auto_candidates(QuantPolicy(block=64, accuracy_level=0))
    nbits = [p for p in tried if p.mode in ("nb8", "nb4")]
    assert [(p.mode, p.block, p.accuracy_level) for p in nbits] == [("nb8", 64, 0), ("nb4", 64, 0)]
    assert all(p.block == 0 and p.accuracy_level is None for p in tried if p not in nbits)
    free = [p for p in auto_candidates(QuantPolicy()) if p.mode == "nb8"]
    assert sorted(p.accuracy_level for p in free) == [0, 4] and {p.block for p in free} == {0}


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--block", "48"], "Invalid value for '--block'"),
        (["--accuracy-level", "2"], "Invalid value for '--accuracy-level'"),
        (["--mode", "w8", "--block", "32"], "--block needs --mode nb8, nb4 or auto"),
    ],
)
def test_the_command_refuses_a_bad_pin_in_one_line(cli_run, tmp_path, args, words):
    model = tmp_path / "model.onnx"
    onnx.save(_mlp(), model)
    result = cli_run("quantize", model, "--out", tmp_path / "q", *args)
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert words in lines[-1] and "Traceback" not in result.output


def test_the_command_writes_the_pinned_block_and_level(cli_run, digits, tmp_path):
    out = tmp_path / "q"
    result = cli_run(
        "quantize", digits / "ex" / "model.onnx", "--out", out, "--mode", "nb8",
        "--block", "256", "--accuracy-level", "0", "--calib", digits / "ck" / "calib.npz",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "nb8/l0/b256" in result.output
    model = onnx.load(out / "model.nb8.onnx")
    nodes = [n for n in model.graph.node if n.op_type == "MatMulNBits"]
    attrs = [{a.name: a.i for a in n.attribute} for n in nodes]
    assert nodes and all(a["block_size"] == 256 and a.get("accuracy_level", 0) == 0 for a in attrs)


def test_a_candidate_with_contrib_ops_is_named_with_the_builds_that_lack_them():
    model, x = _mlp(), _x()
    w8, _ = apply_policy(model, QuantPolicy("w8"), {"x": x})
    nb8, _ = apply_policy(model, QuantPolicy("nb8"), {"x": x})
    assert contrib_ops(w8) == [] and contrib_ops(nb8, None) == ["com.microsoft:MatMulNBits"]
    assert mobile_note([("w8", []), ("dynamic", [])]) is None
    # operators the reduced package had are not named; the others are, grouped by set
    assert beyond_mobile_package(["com.microsoft:QLinearConv"]) == []
    note = mobile_note(
        [
            ("w8", []),
            ("nb8/l4", ["com.microsoft:MatMulNBits"]),
            ("nb8/l0", ["com.microsoft:MatMulNBits"]),
            ("nb8/l4 text", ["com.microsoft:GatherBlockQuantized", "com.microsoft:MatMulNBits"]),
        ]
    )
    assert note.startswith("mobile builds: nb8/l4, nb8/l0 use com.microsoft:MatMulNBits; ")
    assert "nb8/l4 text use com.microsoft:GatherBlockQuantized, com.microsoft:MatMulNBits" in note
    assert "not in the pre-built onnxruntime-mobile package" in note and "w8" not in note


def test_an_ort_copy_with_matmulnbits_says_which_builds_run_it(digits, tmp_path):
    config = QuantConfig(tmp_path, QuantPolicy("nb8"), digits / "ck" / "calib.npz", ort_format=True)
    result = quantize(digits / "ex" / "model.onnx", config)
    listed = result.files["ort-config"].read_text()
    assert "com.microsoft;1;MatMulNBits" in listed  # what the note says the config holds
    notes = "\n".join(result.notes)
    assert "mobile builds: nb8/l4 use com.microsoft:MatMulNBits" in notes
    assert f"{result.files['onnx-ort'].name} needs com.microsoft:MatMulNBits" in notes
    # this machine's onnxruntime (a full build, as validate's ort-mobile row uses) runs it
    assert ort.InferenceSession(str(result.files["onnx-ort"])).get_inputs()
