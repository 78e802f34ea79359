"""fp16 as fp16 hardware rounds it: half-precision partial sums, in a kernel's order (fp16_eval)."""

from __future__ import annotations

import shutil
import subprocess
import uuid
from pathlib import Path

import device_fixtures as fx
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from cr_edge.quantize.apply import apply_policy
from cr_edge.quantize.fp16_eval import ORDERS, Fp16Session, dot16, is_fp16
from cr_edge.quantize.integer_eval import ReferenceSession
from cr_edge.quantize.judge import FP16_HW, three_ways
from cr_edge.quantize.measure import parity
from cr_edge.quantize.policy import QuantConfig, QuantPolicy
from cr_edge.quantize.quantizer import quantize
from cr_edge.runtimes.runtime import Session, TensorSpec
from cr_edge.validate.oracle import Oracle, load_oracle
from tests import trained

emulated_arm64 = fx.emulated_arm64  # the emulated root, built once per test run

H = np.float16


def _dot_model(w: np.ndarray) -> onnx.ModelProto:
    """``y = x @ w`` in fp16 between fp32 Casts, as the fp16 converter writes it."""
    nodes = [
        helper.make_node("Cast", ["x"], ["xh"], to=TensorProto.FLOAT16),
        helper.make_node("MatMul", ["xh", "w"], ["yh"]),
        helper.make_node("Cast", ["yh"], ["y"], to=TensorProto.FLOAT),
    ]
    k, m = w.shape
    graph = helper.make_graph(
        nodes,
        "dot",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", m])],
        [numpy_helper.from_array(w.astype(H), "w")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


# 2048 + 1 is not a half (its spacing there is 2): in fp16 every +1 after 2048 is lost.
X = np.array([[1.0, 1.0, 1.0, 1.0]], np.float32)
W = np.array([[2048.0], [1.0], [1.0], [1.0]], np.float32)


def _by_hand_sequential(x: np.ndarray, w: np.ndarray) -> np.float16:
    acc = H(0)
    for xi, wi in zip(x, w, strict=True):
        acc = H(acc + H(H(xi) * H(wi)))  # each product, then each partial sum, as a half
    return acc


def test_sequential_fp16_accumulation_loses_the_digits_computed_by_hand():
    model = _dot_model(W)
    y = Fp16Session(model, "sequential").run({"x": X})[0]
    expected = _by_hand_sequential(X[0], W[:, 0])
    assert expected == 2048.0  # the three +1 vanish one by one
    assert y[0, 0] == expected
    # a pairwise tree adds the ones together first: (2048 + 1) + (1 + 1) = 2048 + 2
    pairwise = H(H(H(2048) + H(1)) + H(H(1) + H(1)))
    assert pairwise == 2050.0 and Fp16Session(model, "pairwise").run({"x": X})[0][0, 0] == 2050
    # onnx's reference evaluator sums in float and rounds once: 2051 -> 2052
    assert ReferenceSession(model).run({"x": X})[0][0, 0] == 2052


def test_a_fused_multiply_add_rounds_once_where_a_product_then_a_sum_round_twice():
    # (1 + 2^-10)(1 + 2^-9) = 1 + 3 2^-10 + 2^-19: a half product drops the 2^-19; after
    # the -1 an FMA keeps it (3 2^-10 + 2^-19 is a half: its spacing there is 2^-19).
    x = np.array([[1.0, 1 + 2**-10]], np.float32)
    w = np.array([[-1.0], [1 + 2**-9]], np.float32)
    rounded = H(H(-1) + H(H(x[0, 1]) * H(w[1, 0])))
    fused = H(np.float64(-1) + np.float64(x[0, 1]) * np.float64(w[1, 0]))
    assert rounded == 3 * 2**-10 and fused == 3 * 2**-10 + 2**-19
    assert dot16(x.astype(H), w.astype(H), "sequential")[0, 0] == rounded
    assert dot16(x.astype(H), w.astype(H), "sequential fused")[0, 0] == fused


@pytest.mark.parametrize("order", ORDERS)
def test_every_order_sums_exact_halves_exactly(order):
    """Small integers add without rounding in fp16: every order must give the exact product."""
    rng = np.random.default_rng(0)
    a = rng.integers(-8, 8, (5, 37)).astype(H)
    b = rng.integers(-8, 8, (37, 3)).astype(H)
    exact = a.astype(np.int64) @ b.astype(np.int64)
    assert np.array_equal(dot16(a, b, order).astype(np.int64), exact)


def _ill_conditioned() -> tuple[onnx.ModelProto, np.ndarray, np.ndarray]:
    """``y = 1000 u + 0.5 v - 1000 u + 0.5 w`` for inputs ``(u, v, u, w)``: large terms that
    cancel, a small result.

    In float the two ``1000 u`` cancel exactly; in fp16 the partial sum ``1000 u + 0.5 v``
    (in 250..1000, spacing 0.25..0.5) loses most of ``0.5 v`` first.
    """
    w = np.array([[1000.0], [0.5], [-1000.0], [0.5]], np.float32)
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "w", "b"], ["y"])],
        "cancel",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 1])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.zeros(1, np.float32), "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    x = np.random.default_rng(1).uniform(0.25, 1.0, (64, 4)).astype(np.float32)
    x[:, 2] = x[:, 0]
    return model, x, x.astype(np.float64) @ w.astype(np.float64)


def test_an_ill_conditioned_net_passes_the_reference_evaluator_and_fails_fp16_hardware(tmp_path):
    model, x, y64 = _ill_conditioned()
    half, _ = apply_policy(model, QuantPolicy("fp16"), {"x": x})
    assert is_fp16(half) and not is_fp16(model)
    oracle = Oracle(tmp_path / "cancel.ref.npz", x, y64.astype(np.float32))
    ways, notes = three_ways(half, None, {"cr_edge.precision": "fp16"}, oracle)
    verdicts = {w.name.split(" (")[0]: w for w in ways}
    assert verdicts["exact"].parity.ok  # today's exact check: float sums, one rounding
    assert verdicts["onnxruntime b1"].parity.ok and verdicts["onnxruntime b64"].parity.ok
    hw = verdicts[FP16_HW]
    assert not hw.parity.ok and hw.parity.max_abs_err > 10 * hw.parity.atol
    assert "fp16 accumulation" in hw.failure
    assert any("fp16" in n for n in notes)


def test_a_zoo_model_quantized_to_fp16_still_passes_with_fp16_accumulation(trained_root, tmp_path):
    ex = trained.exported(trained_root, "digits-cr", "shipped")
    ck = trained.checkpoint(trained_root, "digits-cr")
    result = quantize(
        ex.files["onnx"], QuantConfig(tmp_path, QuantPolicy("fp16"), ck / "calib.npz")
    )
    chosen = result.chosen
    hw = [w for w in chosen.ways if w.name.startswith(FP16_HW)]
    assert len(hw) == 1 and hw[0].parity.ok, hw[0].failure
    assert chosen.passed, chosen.why
    assert hw[0].parity.max_abs_err > 0  # it did round: not a copy of the fp32 outputs


def test_an_fp32_graph_is_not_judged_as_fp16(tmp_path):
    model, x, y64 = _ill_conditioned()
    oracle = Oracle(Path(tmp_path / "o.npz"), x, y64.astype(np.float32))
    ways, _ = three_ways(model, None, {"cr_edge.precision": "fp32"}, oracle)
    assert not any(w.name.startswith(FP16_HW) for w in ways)


# --- against the emulated ARM64 device with fp16 arithmetic (cr_edge.devices.emulated) ---

FP16_CORE = "neoverse-n1"  # ARMv8.2-A with FP16: onnxruntime runs fp16 Gemms in fp16 there
DEVICE_RUN = """
import sys, numpy as np, onnxruntime as ort
d = sys.argv[1]
s = ort.InferenceSession(d + "/model.onnx", providers=["CPUExecutionProvider"])
f = np.load(d + "/feeds.npz")
np.savez(d + "/out.npz", *s.run(None, {k: f[k] for k in f.files}))
"""


class DeviceSession(Session):
    """``model`` under onnxruntime on the emulated device: one emulated process per run."""

    def __init__(self, prefix: list[str], model: onnx.ModelProto) -> None:
        from cr_edge.devices.emulated import EMULATED_PYTHON, EMULATED_WORKDIR, emulated_root

        name = f"fp16-{uuid.uuid4().hex[:12]}"
        self.host = emulated_root() / EMULATED_WORKDIR.lstrip("/") / name
        self.host.mkdir(parents=True)
        (self.host / "model.onnx").write_bytes(model.SerializeToString())
        self.argv = [*prefix, EMULATED_PYTHON, "-c", DEVICE_RUN, f"{EMULATED_WORKDIR}/{name}"]
        self.inputs = [TensorSpec(v.name, (None,), np.dtype(np.float32)) for v in model.graph.input]
        self.outputs = [
            TensorSpec(v.name, (None,), np.dtype(np.float32)) for v in model.graph.output
        ]
        self.metadata = {p.key: p.value for p in model.metadata_props}

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        np.savez(self.host / "feeds.npz", **feeds)
        done = subprocess.run(self.argv, capture_output=True, text=True, timeout=600, check=False)
        assert done.returncode == 0, done.stderr[-2000:]
        with np.load(self.host / "out.npz") as out:
            return [out[f"arr_{i}"] for i in range(len(out.files))]


def _fp16_core() -> list[str]:
    """The emulated fp16 core's argv prefix, on the root ``emulated_arm64`` built."""
    from cr_edge.devices.emulated import emulated_prefix

    return emulated_prefix(FP16_CORE)


@pytest.mark.slow
def test_where_the_emulated_fp16_core_fails_a_model_the_fp16_check_fails_it_too(
    trained_root, tmp_path, emulated_arm64
):
    prefix = _fp16_core()
    model, x, y64 = _ill_conditioned()
    half, _ = apply_policy(model, QuantPolicy("fp16"), {"x": x})
    cases = {"ill-conditioned": (half, Oracle(tmp_path / "c.npz", x, y64.astype(np.float32)))}
    ex = trained.exported(trained_root, "digits-cr", "shipped")
    ck = trained.checkpoint(trained_root, "digits-cr")
    zoo = quantize(ex.files["onnx"], QuantConfig(tmp_path, QuantPolicy("fp16"), ck / "calib.npz"))
    cases["digits-cr"] = (onnx.load(zoo.files["onnx"]), load_oracle(zoo.files["ref"]))
    failed_on_device = []
    for name, (m, oracle) in cases.items():
        meta = {p.key: p.value for p in m.metadata_props} or {"cr_edge.precision": "fp16"}
        on_device = DeviceSession(prefix, m)
        device = parity(on_device, None, meta, oracle)
        y_device = on_device.run({m.graph.input[0].name: oracle.x})[0]
        same = [
            o
            for o in ORDERS
            if np.array_equal(Fp16Session(m, o).run({m.graph.input[0].name: oracle.x})[0], y_device)
        ]
        shutil.rmtree(on_device.host)
        assert same, f"{name}: no accumulation order reproduces {FP16_CORE}'s outputs"
        ways, _ = three_ways(m, None, meta, oracle)
        ours = next(w for w in ways if w.name.startswith(FP16_HW))
        here = next(w for w in ways if w.name == "onnxruntime b64")
        print(
            f"{name}: {FP16_CORE} err {device.max_abs_err:.4g} ({'pass' if device.ok else 'FAIL'}),"
            f" {ours.name} {ours.parity.max_abs_err:.4g}, onnxruntime here "
            f"{here.parity.max_abs_err:.4g}, atol {device.atol:g}; bit-identical: {same}"
        )
        if not device.ok:
            failed_on_device.append(name)
            assert not ours.parity.ok, f"{name}: fails on {FP16_CORE}, passes the fp16 check"
        # the model is no coarser than the core: its worst order errs at least as much
        assert ours.parity.max_abs_err >= device.max_abs_err * 0.99
    assert "ill-conditioned" in failed_on_device  # the implication was exercised
