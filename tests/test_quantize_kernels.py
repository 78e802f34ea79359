"""The AVX2 u8s8 emulation and the exact-maths evaluation, on hand-built graphs (no training).

The emulation must catch on this (VNNI) machine what an AVX2 machine without VNNI
computes: one Gemm whose u8 x s8 pair sums leave int16. Expected values are worked
out by hand from the kernel's definition, not by the code under test.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.quantization import QuantType, quantize_dynamic, quantize_static

from cr_edge.artifacts.metadata import key
from cr_edge.quantize.apply import apply_policy
from cr_edge.quantize.calibration import NpzReader
from cr_edge.quantize.gemm_to_matmul import gemm_to_matmul
from cr_edge.quantize.integer_eval import EmulateQdqKernels, ReferenceSession, integer_kernel_nodes
from cr_edge.quantize.judge import three_ways
from cr_edge.quantize.kernels import integer_matmul, saturating_matmul
from cr_edge.quantize.measure import as_session, session
from cr_edge.quantize.policy import QuantPolicy
from cr_edge.quantize.secant import min_cosine, noise_floor, secant
from cr_edge.validate.oracle import Oracle
from cr_edge.validate.tolerances import SECANT_MIN_COSINE

K, M = 16, 4
# The outputs reach ~16: a step of 0.05 (atol 0.15) holds exact maths by a margin and is
# still ~10x below what the saturated pair sums cost (each loses half its value).
META = {"cr_edge.precision": "int8", key("output_step"): "0.05"}


def test_pair_sums_saturate_at_int16_as_vpmaddubsw_does():
    a = np.full((1, 4), 255, dtype=np.uint8)
    b = np.array([[127], [127], [-128], [1]], dtype=np.int8)
    got, saturated = saturating_matmul(a, b)
    # pair (0, 1): 255*127*2 = 64770 -> 32767; pair (2, 3): -32640 + 255 = -32385 (exact)
    assert got.tolist() == [[32767 - 32385]] and saturated == 1
    # u8 x u8 widens without saturating; a zero point is applied from exact sums
    assert integer_matmul(a, 0, b.astype(np.int16).clip(0).astype(np.uint8), 0)[1] == 0
    shifted, _ = integer_matmul(a, 5, np.array([[1], [2], [3], [4]], np.int8), 0)
    assert shifted.tolist() == [[250 * 10]]


def _one_gemm() -> onnx.ModelProto:
    """``y = x W^T + b`` with every weight near +1: equal columns, pairs of one sign."""
    rng = np.random.default_rng(0)
    w = rng.uniform(0.9, 1.0, (M, K)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "w", "b"], ["y"], name="gemm", transB=1)],
        "one_gemm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", K])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", M])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.zeros(M, np.float32), "b")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _oracle(model: onnx.ModelProto, x: np.ndarray) -> Oracle:
    return Oracle(path=None, x=x, y=session(model).run(None, {"x": x})[0])


@pytest.fixture(scope="module")
def inputs() -> np.ndarray:
    """Non-negative inputs: the u8 codes of the activations sit near 255."""
    x = np.random.default_rng(1).uniform(0.5, 1.0, (32, K)).astype(np.float32)
    x[:, 0] = -0.01  # the zero point sits at code 1 or 2, not 0
    return x


def _ort_defaults(model: onnx.ModelProto, x: np.ndarray, kind: str) -> onnx.ModelProto:
    """onnxruntime's quantizers with their defaults: u8 activations x s8 weights, 8 bits."""
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "in.onnx", Path(tmp) / "out.onnx"
        onnx.save(gemm_to_matmul(model) if kind == "dynamic" else model, src)
        if kind == "dynamic":
            quantize_dynamic(src, dst, per_channel=True, weight_type=QuantType.QInt8)
        else:
            quantize_static(
                src, dst, NpzReader({"x": x}), per_channel=True, activation_type=QuantType.QUInt8
            )
        return onnx.load(dst)


@pytest.mark.parametrize("kind", ["dynamic", "static-qdq"])
def test_the_emulation_catches_an_overflow_that_exact_maths_does_not(inputs, kind):
    model = _one_gemm()
    quantized = _ort_defaults(model, inputs, kind)
    assert integer_kernel_nodes(quantized) == 1
    ways, _ = three_ways(quantized, None, META, _oracle(model, inputs))
    by_name = {w.name.split()[0]: w for w in ways if w.name.split()[-1] != "b1"}
    assert by_name["exact"].parity.outputs_ok, by_name["exact"].parity
    avx2 = by_name["avx2"]
    assert not avx2.parity.outputs_ok and avx2.saturated > 0
    assert "overflows in u8s8 kernels without VNNI" in avx2.failure
    # 16 products of ~255 * 127 each: every pair sum is twice the int16 limit, far off
    assert avx2.parity.max_abs_err > 10 * by_name["exact"].parity.max_abs_err


@pytest.mark.parametrize("mode", ["dynamic", "static"])
def test_cr_edge_activation_policies_never_saturate_on_the_same_gemm(inputs, mode):
    model = _one_gemm()
    quantized, _ = apply_policy(model, QuantPolicy(mode, equalize=False), {"x": inputs})
    ways, _ = three_ways(quantized, None, META, _oracle(model, inputs))
    avx2 = next(w for w in ways if w.name.startswith("avx2"))
    assert avx2.saturated == 0 and avx2.parity.outputs_ok, avx2


def test_seven_bit_weights_do_not_saturate(inputs):
    model = _one_gemm()
    quantized, _ = apply_policy(model, QuantPolicy("dynamic", equalize=False), {"x": inputs})
    for t in quantized.graph.initializer:  # the weight codes halved: reduce_range's 7 bits
        if t.data_type == TensorProto.INT8 and len(t.dims) == 2:
            codes = numpy_helper.to_array(t) // 2
            t.CopyFrom(numpy_helper.from_array(codes.astype(np.int8), t.name))
    emulated = ReferenceSession(quantized, avx2=True)
    exact = ReferenceSession(quantized).run({"x": inputs})[0]
    np.testing.assert_array_equal(emulated.run({"x": inputs})[0], exact)
    assert emulated.saturated == 0


def test_emulation_pass_refuses_float_products_and_says_why():
    model = _one_gemm()
    import onnx_ir as ir

    irm = ir.from_proto(model)
    gemm = next(iter(irm.graph))
    assert "not dequantized from 8-bit codes" in EmulateQdqKernels.refusal(gemm)
    assert not EmulateQdqKernels()(irm).modified
    out = ReferenceSession(model, avx2=True).run({"x": np.ones((2, K), np.float32)})[0]
    np.testing.assert_allclose(
        out, session(model).run(None, {"x": np.ones((2, K), np.float32)})[0], rtol=1e-6
    )


def _coarse_input(model: onnx.ModelProto, step: float) -> onnx.ModelProto:
    """``model`` behind a QuantizeLinear/DequantizeLinear of ``x`` with the given step."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    g.initializer.extend(
        [
            numpy_helper.from_array(np.array(step, np.float32), "x_step"),
            numpy_helper.from_array(np.array(128, np.uint8), "x_zero"),
        ]
    )
    g.node[0].input[0] = "x_deq"
    qdq = [
        helper.make_node("QuantizeLinear", ["x", "x_step", "x_zero"], ["x_q"]),
        helper.make_node("DequantizeLinear", ["x_q", "x_step", "x_zero"], ["x_deq"]),
    ]
    for i, node in enumerate(qdq):
        g.node.insert(i, node)
    return out


def test_the_primal_secant_sees_a_staircase_the_straight_through_view_hides(inputs):
    """A secant over ~1 step of a quantized input is jumpy; over fine weights it is not."""
    model = _one_gemm()
    v = np.random.default_rng(2).standard_normal(inputs.shape).astype(np.float32)
    d = 0.004 * v
    ref = secant(as_session(session(model)), inputs, d)
    coarse = secant(as_session(session(_coarse_input(model, 0.016))), inputs, d)
    assert min_cosine(coarse, ref) < SECANT_MIN_COSINE
    w8, _ = apply_policy(model, QuantPolicy("w8"), {"x": inputs})
    assert min_cosine(secant(as_session(session(w8)), inputs, d), ref) >= SECANT_MIN_COSINE


def test_a_secant_below_the_output_noise_has_no_direction_but_a_large_one_keeps_its_sign():
    """One-score heads: a scalar secant's cosine is its sign, which noise flips where the
    fp32 secant is smaller than what two in-tolerance outputs may differ by."""
    floor = noise_floor({"cr_edge.task": "regress"}, output_step=0.1, outputs=1)  # 3 steps
    assert noise_floor({"cr_edge.task": "classify"}, 0.1, 10) == 0.0  # logits: cosine only
    ref = np.array([[0.01], [5.0], [0.01]])
    assert min_cosine(-ref[:1], ref[:1], floor) == 1.0  # both within the noise: passes
    assert min_cosine(-ref[1:2], ref[1:2], floor) == -1.0  # a real slope reversed: fails
    assert min_cosine(np.array([[2.0]]), ref[2:], floor) == 1.0  # same sign, so cos 1...
    assert min_cosine(np.array([[-2.0]]), ref[2:], floor) == -1.0  # ...but out of the noise
    assert min_cosine(-ref, ref) == -1.0  # without a floor every sign counts


# ---- integer convolutions: the same kernel over im2col columns -----------------------

C, L = 8, 12  # Conv1d channels and length: each output sums C * 3 = 24 products


def _conv_integer(**attrs) -> onnx.ModelProto:
    """One ConvInteger (u8 x, s8 w with zero points), the op onnxruntime's dynamic mode writes."""
    graph = helper.make_graph(
        [helper.make_node("ConvInteger", ["x", "w", "xz", "wz"], ["y"], name="conv", **attrs)],
        "conv_integer",
        [
            helper.make_tensor_value_info("x", TensorProto.UINT8, None),
            helper.make_tensor_value_info("w", TensorProto.INT8, None),
            helper.make_tensor_value_info("xz", TensorProto.UINT8, []),
            helper.make_tensor_value_info("wz", TensorProto.INT8, []),
        ],
        [helper.make_tensor_value_info("y", TensorProto.INT32, None)],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize(
    "attrs",
    [
        {"pads": [1, 1]},
        {"pads": [2, 0], "strides": [2], "dilations": [2]},
        {"pads": [1, 1, 0, 1], "strides": [1, 2], "group": 2},
    ],
)
def test_conv_emulation_is_exact_where_no_pair_sum_can_saturate(attrs):
    rng = np.random.default_rng(3)
    two_d = "group" in attrs
    x = rng.integers(0, 256, (2, C, *((5, 6) if two_d else (L,)))).astype(np.uint8)
    w_shape = (6, C // attrs.get("group", 1), *((2, 3) if two_d else (3,)))
    w = rng.integers(-60, 61, w_shape).astype(np.int8)  # 2 * 255 * 60 < 32767
    feeds = {"x": x, "w": w, "xz": np.array(7, np.uint8), "wz": np.array(0, np.int8)}
    model = _conv_integer(**attrs)
    emulated = ReferenceSession(model, avx2=True)
    exact = ReferenceSession(model).run(feeds)[0]
    np.testing.assert_array_equal(emulated.run(feeds)[0], exact)
    assert emulated.saturated == 0


def _one_conv() -> onnx.ModelProto:
    """Conv1d with every weight near +1: the pair sums of codes near 255 overflow int16."""
    rng = np.random.default_rng(0)
    w = rng.uniform(0.9, 1.0, (4, C, 3)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w", "b"], ["y"], name="conv", pads=[1, 1])],
        "one_conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", C, L])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4, L])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.zeros(4, np.float32), "b")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("kind", ["dynamic", "static-qdq"])
def test_the_emulation_catches_a_conv_overflow_that_exact_maths_does_not(kind):
    x = np.random.default_rng(1).uniform(0.5, 1.0, (16, C, L)).astype(np.float32)
    x[:, 0, 0] = -0.01  # the zero point sits at code 1 or 2, not 0
    model = _one_conv()
    quantized = _ort_defaults(model, x, kind)
    ops = {n.op_type for n in quantized.graph.node}
    assert ("ConvInteger" in ops) == (kind == "dynamic") and integer_kernel_nodes(quantized)
    ways, notes = three_ways(quantized, None, META_CONV, _oracle(model, x))
    by_name = {w.name.split()[0]: w for w in ways if w.name.split()[-1] != "b1"}
    assert "avx2" in by_name and not any("unavailable" in n for n in notes), notes
    assert by_name["exact"].parity.outputs_ok, by_name["exact"].parity
    avx2 = by_name["avx2"]
    assert not avx2.parity.outputs_ok and avx2.saturated > 0
    assert "overflows in u8s8 kernels without VNNI" in avx2.failure


# Outputs reach ~24 (24 products of ~1): a step of 0.1 (atol 0.3) holds exact maths.
META_CONV = {"cr_edge.precision": "int8", key("output_step"): "0.1"}


@pytest.mark.parametrize(
    ("kernel", "strides", "pads"), [((2, 3), (2, 1), (0, 0, 0, 0)), ((2, 2), (2, 2), (1, 0, 1, 0))]
)
def test_the_vectorised_average_pool_is_onnx_s_own(kernel, strides, pads):
    node = helper.make_node(
        "AveragePool", ["x"], ["y"], kernel_shape=kernel, strides=strides, pads=pads
    )
    graph = helper.make_graph(
        [node],
        "pool",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    x = np.random.default_rng(4).standard_normal((3, 4, 9, 8)).astype(np.float32)
    want = onnx.reference.ReferenceEvaluator(model).run(None, {"x": x})[0]
    got = ReferenceSession(model).run({"x": x})[0]  # float64 sums: within float32 rounding
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
