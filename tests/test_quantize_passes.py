"""The quantize graph passes on inline models: op types after the pass, then outputs under ORT."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest

from cr_edge.quantize.gemm_to_matmul import GemmToMatMul
from cr_edge.quantize.measure import session
from cr_edge.quantize.weight_only import LEVELS, WeightOnlyInt8, quantize_weight

# Two Gemms share one transB weight (as the JVP companion's primal and v paths do).
SHARED = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[n, 4] x, float[n, 4] v) => (float[n, 3] y, float[n, 3] jv) <float[3, 4] w = {
  1, -2, 3, 0.5, 0.25, -4, 1, 2, 8, -1, 0.125, 3}, float[3] b = {0.5, -1, 2}> {
  y = Gemm<transB = 1>(x, w, b)
  jv = Gemm<transB = 1>(v, w)
}
"""
REFUSED = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[n, 4] x, float[3, 4] w) => (float[n, 3] y, float[n, 3] z) <float[4, 3] c = {
  1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12}> {
  y = Gemm<transB = 1>(x, w)
  z = Gemm<alpha = 2.0>(x, c)
}
"""


def _feeds(n: int = 5) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {k: rng.standard_normal((n, 4)).astype(np.float32) for k in ("x", "v")}


def _run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    names = {i.name for i in model.graph.input}
    return session(model).run(None, {k: v for k, v in feeds.items() if k in names})


def test_gemm_to_matmul_rewrites_plain_gemms_and_shares_one_transposed_weight():
    model = onnx.parser.parse_model(SHARED)
    irm = ir.from_proto(model)
    assert GemmToMatMul()(irm).modified
    out = ir.to_proto(irm)
    assert sorted(n.op_type for n in out.graph.node) == ["Add", "MatMul", "MatMul"]
    assert [t.name for t in out.graph.initializer] == ["b", "w__t"]
    for got, want in zip(_run(out, _feeds()), _run(model, _feeds()), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_gemm_to_matmul_says_why_it_leaves_a_gemm_alone():
    irm = ir.from_proto(onnx.parser.parse_model(REFUSED))
    reasons = [GemmToMatMul.refusal(n) for n in irm.graph]
    assert "not a constant initializer" in reasons[0] and "alpha/beta" in reasons[1]
    assert not GemmToMatMul()(irm).modified


def test_weight_only_int8_stores_codes_and_keeps_the_function_to_half_a_step():
    model = onnx.parser.parse_model(SHARED)
    irm = ir.from_proto(model)
    assert WeightOnlyInt8()(irm).modified
    out = ir.to_proto(irm)
    ops = [n.op_type for n in out.graph.node]
    assert ops.count("DequantizeLinear") == 1 and ops.count("Gemm") == 2  # shared once
    codes = next(t for t in out.graph.initializer if t.data_type == onnx.TensorProto.INT8)
    assert "w" not in {t.name for t in out.graph.initializer}  # the float weight is gone
    # one scale per input column or per output row: the worst step on that axis bounds
    # every product it scales
    w = onnx.numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == "w"))
    feeds = _feeds()
    if onnx.numpy_helper.to_array(codes).shape == (4, 3):  # input axis first, transposed
        bound = 0.5 * np.abs(feeds["x"]) @ (np.abs(w).max(axis=0) / LEVELS)
        bound = bound[:, None]
    else:
        per_row = np.abs(w).max(axis=1) / LEVELS
        bound = 0.5 * np.abs(feeds["x"]).sum(axis=1, keepdims=True) * per_row
    got, want = _run(out, feeds)[0], _run(model, feeds)[0]
    assert np.all(np.abs(got - want) <= bound + 1e-5)


@pytest.mark.parametrize(
    "w, rms, axis",
    [  # input 0 is 1000x louder than input 1 but has 500x smaller weights: scale per input
        ([[0.01, 0.02, -0.015], [5.0, -3.0, 4.0]], [1000.0, 1.0], 0),
        # equal inputs, outputs 1-5 on a 500x smaller scale than output 0: per output, with
        # 6 scales for 2, because it cuts the error ~6x (more than MORE_SCALES_GAIN)
        (
            [[5.0, 0.01, 0.02, -0.01, 0.015, 0.01], [-3.0, 0.02, -0.01, 0.01, 0.02, -0.02]],
            [1, 1],
            1,
        ),
    ],
)
def test_weight_only_int8_scales_the_axis_that_costs_the_output_least(w, rms, axis):
    w, rms = np.asarray(w, np.float32), np.asarray(rms, np.float32)
    text = f"""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[n, 2] x) => (float[n, {w.shape[1]}] y) <float[2, {w.shape[1]}] w = {{{", ".join(map(str, w.ravel()))}}}> {{
      y = MatMul(x, w)
    }}
    """
    model = onnx.parser.parse_model(text)
    irm = ir.from_proto(model)
    WeightOnlyInt8({"w": rms})(irm)
    out = ir.to_proto(irm)
    (dq,) = [n for n in out.graph.node if n.op_type == "DequantizeLinear"]
    assert onnx.helper.get_attribute_value(dq.attribute[0]) == axis
    x = (np.random.default_rng(1).standard_normal((200, 2)) * rms).astype(np.float32)
    got, want = _run(out, {"x": x})[0], _run(model, {"x": x})[0]
    codes, scale = quantize_weight(w, 1 - axis)  # the axis it did not choose
    other = codes * (scale[None, :] if axis == 0 else scale[:, None])
    assert np.square(got - want).sum() < np.square(x @ other - want).sum()


@pytest.mark.parametrize("text", [REFUSED])
def test_weight_only_int8_refuses_what_is_not_a_constant_layer_weight(text):
    irm = ir.from_proto(onnx.parser.parse_model(text))
    first = next(iter(irm.graph))
    assert "not a constant initializer" in WeightOnlyInt8.refusal(first)
