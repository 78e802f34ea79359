"""The graph edits of quantize, export and profile as onnx-ir passes, on inline models.

Each test builds the pass's input from ONNX text, runs the pass, checks the result with
the full ONNX checker, asserts the op types, and compares onnxruntime's outputs with
numbers worked out by hand or by numpy (never by the code under test).
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from onnx import TensorProto

from cr_edge.artifacts import metadata as schema
from cr_edge.errors import ExportError
from cr_edge.profile.limit import floor_artifact
from cr_edge.quantize.companion import tie_nbits_, tie_weights
from cr_edge.quantize.embedding import CodeEmbeddingTables, quantize_embeddings
from cr_edge.quantize.equalize import equalize
from cr_edge.quantize.measure import ExposeValues, probe
from cr_edge.quantize.stale_types import ForgetStaleTypes
from cr_edge.runtimes.ort import OrtSession


def _session(model: onnx.ModelProto, optimize: bool = True) -> ort.InferenceSession:
    options = ort.SessionOptions()
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )


def _checked_ops(model: onnx.ModelProto) -> list[str]:
    """The op types in graph order, after the full checker has accepted ``model``."""
    onnx.checker.check_model(model, full_check=True)
    return [n.op_type for n in model.graph.node]


def _init(model: onnx.ModelProto, name: str) -> np.ndarray:
    return next(onnx.numpy_helper.to_array(t) for t in model.graph.initializer if t.name == name)


# Two Gemms read one transB weight (the companion's primal and v paths). Column maxima of
# |W| are 4, 1, 1; the calibration input's column maxima of |x| are 1, 1, 4.
EQUALIZE = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[n, 3] x, float[n, 3] v) => (float[n, 2] y, float[n, 2] jv)
<float[2, 3] w = {4, -1, 0.5, -2, 0.5, -1}, float[2] b = {0.5, -1}> {
  [primal] y = Gemm<transB = 1>(x, w, b)
  [tangent] jv = Gemm<transB = 1>(v, w)
}
"""
W = np.array([[4, -1, 0.5], [-2, 0.5, -1]])
X = np.array([[1, -1, 4], [-0.5, 0.25, -2]], dtype=np.float32)


def test_equalize_scales_columns_once_and_multiplies_each_gemm_input():
    model = onnx.parser.parse_model(EQUALIZE)
    out, scales = equalize(model, {"x": X, "v": X})
    # s = sqrt(r_w / r_a) = sqrt(4/1, 1/1, 1/4) = (2, 1, 0.5), whose geometric mean is 1.
    np.testing.assert_allclose(scales["w"], [2, 1, 0.5], rtol=1e-12)
    assert _checked_ops(out) == ["Mul", "Gemm", "Mul", "Gemm"]
    np.testing.assert_array_equal(_init(out, "w"), [[2, -1, 1], [-1, 0.5, -2]])
    # One scale initializer, read by both Muls; the weight's column ranges become 2, 1, 2.
    assert [t.name for t in out.graph.initializer] == ["w", "b", "w__eq_scale"]
    muls = [n for n in out.graph.node if n.op_type == "Mul"]
    assert [n.input[1] for n in muls] == ["w__eq_scale", "w__eq_scale"]
    assert [n.name for n in muls] == ["primal__equalize", "tangent__equalize"]
    v = np.array([[2, 0, -1], [0, 1, 0]], dtype=np.float32)
    y, jv = _session(out).run(None, {"x": X, "v": v})
    np.testing.assert_allclose(y, X @ W.T + [0.5, -1], rtol=1e-6)
    np.testing.assert_allclose(jv, [[7.5, -3], [-1, 0.5]], rtol=1e-6)  # by hand: rows of W . v
    assert onnx.numpy_helper.to_array(model.graph.initializer[0])[0, 0] == 4  # input untouched


def test_equalize_reuses_given_scales_without_measuring():
    model = onnx.parser.parse_model(EQUALIZE)
    out, scales = equalize(model, {}, {"w": np.array([1.0, 2.0, 4.0])})
    assert list(scales) == ["w"]
    np.testing.assert_array_equal(_init(out, "w"), [[4, -0.5, 0.125], [-2, 0.25, -0.25]])
    y, _ = _session(out).run(None, {"x": X, "v": X})
    np.testing.assert_allclose(y, X @ W.T + [0.5, -1], rtol=1e-6)


PROBE = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[n, 2] x) => (float[n, 2] y) <float[n, 2] a> {
  a = Relu(x)
  y = Mul(a, a)
}
"""


def test_expose_values_adds_outputs_and_probe_reads_them():
    model = onnx.parser.parse_model(PROBE)
    irm = ir.from_proto(model)
    assert ExposeValues(["a", "y", "x"])(irm).modified
    out = ir.to_proto(irm)
    assert _checked_ops(out) == ["Relu", "Mul"]
    assert [o.name for o in out.graph.output] == ["y", "a", "x"]
    x = np.array([[-1, 2], [3, -4]], dtype=np.float32)
    got = probe(model, ["a", "x"], {"x": x})
    np.testing.assert_array_equal(got["a"], [[0, 2], [3, 0]])
    np.testing.assert_array_equal(got["x"], x)
    assert [o.name for o in model.graph.output] == ["y"]  # the caller's model is untouched
    with pytest.raises(ValueError, match="'b'"):
        ExposeValues(["b"])(ir.from_proto(model))


# What onnxruntime's fp16 converter can leave: value types recorded as fp16 for tensors a
# Cast (or an fp32 op it kept) makes fp32.
STALE = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[n, 2] x) => (float[n, 2] y) <float16[n, 2] h, float[2] w = {0.5, -2}> {
  h = Relu(x)
  y = Mul(h, w)
}
"""


def test_forget_stale_types_lets_strict_inference_retype_the_graph():
    model = onnx.parser.parse_model(STALE)
    model.graph.value_info.append(onnx.helper.make_tensor_value_info("w", TensorProto.FLOAT16, [2]))
    with pytest.raises(onnx.shape_inference.InferenceError, match="differs"):
        onnx.checker.check_model(model, full_check=True)
    irm = ir.from_proto(model)
    assert ForgetStaleTypes()(irm).modified
    out = onnx.shape_inference.infer_shapes(ir.to_proto(irm), strict_mode=True)
    assert _checked_ops(out) == ["Relu", "Mul"]
    types = {v.name: v.type.tensor_type.elem_type for v in out.graph.value_info}
    assert types == {"h": TensorProto.FLOAT, "w": TensorProto.FLOAT}
    x = np.array([[-1, 2], [3, -4]], dtype=np.float32)
    (y,) = _session(out).run(None, {"x": x})
    np.testing.assert_array_equal(y, [[0, -4], [1.5, 0]])


RECORDED = """
<ir_version: 8, opset_import: ["" : 17], metadata_props: ["z.user": "kept", "cr_edge.policy": "fp32"]>
g (float[n, 2] x) => (float[n, 2] y) <float[2] w = {3, -1}> {
  y = Mul(x, w)
}
"""


def test_metadata_writes_change_the_record_and_nothing_else():
    model = onnx.parser.parse_model(RECORDED)
    graph = model.graph.SerializeToString()
    schema.merge_props_(model, {"cr_edge.policy": "a8w7", "a.key": "1"})
    assert [(p.key, p.value) for p in model.metadata_props] == [
        ("a.key", "1"),
        ("cr_edge.policy", "a8w7"),
        ("z.user", "kept"),
    ]
    schema.write_props_(model, {"cr_edge.degree": 3}, producer=schema.PRODUCER)
    assert _checked_ops(model) == ["Mul"]
    assert model.graph.SerializeToString() == graph
    sess = _session(model)
    meta = sess.get_modelmeta()
    assert meta.custom_metadata_map == {"cr_edge.degree": "3"}
    assert meta.producer_name == "cr-edge"
    (y,) = sess.run(None, {"x": np.array([[1, 2]], dtype=np.float32)})
    np.testing.assert_array_equal(y, [[3, -2]])


# A text-like model: int64 ids in, two float outputs of different widths.
TWO_OUTPUTS = """
<ir_version: 8, opset_import: ["" : 17]>
g (int64[n, 3] ids) => (float[n, 3] y, float[n, 1] total) <int64[1] axes = {1}> {
  y = Cast<to = 1>(ids)
  total = ReduceSum<keepdims = 1>(y, axes)
}
"""


def test_floor_artifact_keeps_inputs_and_outputs_and_does_no_arithmetic(tmp_path):
    model = onnx.parser.parse_model(TWO_OUTPUTS)
    ids = np.array([[1, 2, 3], [4, 5, 6]], dtype=np.int64)
    sess = OrtSession(_session(model))
    art = floor_artifact(sess, {"ids": ids}, tmp_path / "floor.onnx")
    assert onnx.load(tmp_path / "floor.onnx") == art.model
    assert _checked_ops(art.model) == ["Identity", "Identity"]
    assert [(i.name, i.type.tensor_type.elem_type) for i in art.model.graph.input] == [
        ("ids", TensorProto.INT64)
    ]
    y, total = _session(art.model).run(None, {"ids": ids})
    assert [o.name for o in art.model.graph.output] == ["y", "total"]
    np.testing.assert_array_equal(y, np.zeros((2, 3), np.float32))
    np.testing.assert_array_equal(total, np.zeros((2, 1), np.float32))


# A companion after dynamic quantization: the primal path reads W's int8 codes (here by a
# Cast and a per-column scale, as a quantized kernel would), the v path still reads the
# float W, which differs from the deployed weights in one entry (16.5 vs 8 x 2).
DYNAMIC_COMPANION = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[n, 2] x, float[n, 2] v) => (float[n, 2] y, float[n, 2] jv)
<int8[2, 2] w_quantized = {2, -4, 6, 8}, float[2] w_scale = {0.5, 2},
 int8[2] w_zero_point = {0, 0}, float[2, 2] w = {1, -8, 3, 16.5}> {
  [codes] wc = Cast<to = 1>(w_quantized)
  [deployed] wd = Mul(wc, w_scale)
  [primal] y = MatMul(x, wd)
  [tangent] jv = MatMul(v, w)
}
"""


def test_tie_weights_points_the_v_path_at_the_deployed_int8_weights():
    model = onnx.parser.parse_model(DYNAMIC_COMPANION)
    out = tie_weights(model, {"tangent"})
    assert _checked_ops(out) == ["DequantizeLinear", "Cast", "Mul", "MatMul", "MatMul"]
    assert "w" not in {t.name for t in out.graph.initializer}  # the float W is gone
    dq = out.graph.node[0]
    assert list(dq.input) == ["w_quantized", "w_scale", "w_zero_point"]
    assert dq.attribute[0].i == 1  # MatMul: the output channels are W's columns
    x = np.array([[1, 0], [0, 1]], dtype=np.float32)
    v = np.array([[1, 1], [2, -1]], dtype=np.float32)
    # Unoptimised: onnxruntime would fuse DequantizeLinear -> MatMul into an integer
    # kernel that quantizes v as well; the graph's own arithmetic is what is checked here.
    y, jv = _session(out, optimize=False).run(None, {"x": x, "v": v})
    # Deployed W = codes x column scales = [[1, -8], [3, 16]], by hand.
    np.testing.assert_array_equal(y, [[1, -8], [3, 16]])
    np.testing.assert_array_equal(jv, [[4, 8], [-1, -32]])
    assert len(model.graph.node) == 4 and "w" in {t.name for t in model.graph.initializer}


def test_tie_weights_refuses_a_v_path_weight_without_int8_codes():
    model = onnx.parser.parse_model(DYNAMIC_COMPANION.replace("w_quantized", "u_quantized"))
    with pytest.raises(ExportError, match="'w_quantized'"):
        tie_weights(model, {"tangent"})


# MatMulNBits codes of W (K = 16, N = 2, 8 bits, one block per column, zero point 128):
# column 0 is 0.5 x (1..16), column 1 is 2 x (-1). The v path reads a float W 0.25 above.
_K = 16
_CODES = [128 + k + 1 for k in range(_K)] + [127] * _K
_W_FLOAT = [[0.5 * (k + 1) + 0.25, -2 + 0.25] for k in range(_K)]
NBITS_COMPANION = f"""
<ir_version: 8, opset_import: ["" : 17, "com.microsoft" : 1]>
g (float[n, {_K}] x, float[n, {_K}] v) => (float[n, 2] y, float[n, 2] jv)
<uint8[2, 1, {_K}] w_Q8 = {{{", ".join(map(str, _CODES))}}}, float[2] w_scales = {{0.5, 2}},
 float[{_K}, 2] w = {{{", ".join(str(c) for row in _W_FLOAT for c in row)}}}> {{
  [primal] y = com.microsoft.MatMulNBits<K = {_K}, N = 2, bits = 8, block_size = {_K},
    accuracy_level = 4>(x, w_Q8, w_scales)
  [tangent] jv = MatMul(v, w)
}}
"""


def test_tie_nbits_reads_the_primal_codes_at_accuracy_level_0():
    model = onnx.parser.parse_model(NBITS_COMPANION)
    tie_nbits_(model, {"tangent"})
    assert _checked_ops(model) == ["MatMulNBits", "MatMulNBits"]
    tied = model.graph.node[1]
    assert tied.name == "tangent__deployed" and list(tied.output) == ["jv"]
    assert "accuracy_level" not in {a.name for a in tied.attribute}
    assert {t.name for t in model.graph.initializer} == {"w_Q8", "w_scales"}
    v = np.ones((1, _K), dtype=np.float32)
    _, jv = _session(model).run(None, {"x": v, "v": v})
    # sum of 0.5 x (1..16) = 68 and 16 x -2 = -32, by hand (the float W would give 72, -28).
    np.testing.assert_allclose(jv, [[68, -32]], rtol=1e-6)


EMBEDDING = """
<ir_version: 8, opset_import: ["" : 17]>
g (int64[n, 2] ids) => (float[n, 2, 4] e)
<float[3, 4] table = {127, -5, 3, 0, -127, 1, 2, 3, 127, 127, -127, 0}> {
  [embed] e = Gather<axis = 0>(table, ids)
}
"""
IDS = np.array([[2, 0], [1, 1]], dtype=np.int64)
TABLE = np.array([[127, -5, 3, 0], [-127, 1, 2, 3], [127, 127, -127, 0]], dtype=np.float32)


def test_embedding_pass_codes_the_table_and_gathers_its_rows():
    model = onnx.parser.parse_model(EMBEDDING)
    out = quantize_embeddings(model, 8)
    assert _checked_ops(out) == ["GatherBlockQuantized"]
    node = out.graph.node[0]
    assert node.name == "embed_q8" and node.domain == "com.microsoft"
    assert [t.name for t in out.graph.initializer] == ["table_q8", "table_q8_scales"]
    (e,) = _session(out).run(None, {"ids": IDS})
    # Each row's largest |value| is 127 = 127 levels: every entry is a whole code, exact.
    np.testing.assert_array_equal(e, TABLE[IDS])
    (e4,) = _session(quantize_embeddings(model, 4)).run(None, {"ids": IDS})
    # 4 bits: steps of 127/7 ~ 18.1, so entries below 9.07 in size round to 0, by hand.
    four = np.array([[127, 0, 0, 0], [-127, 0, 0, 0], [127, 127, -127, 0]], dtype=np.float32)
    np.testing.assert_allclose(e4, four[IDS], rtol=1e-6)


def test_embedding_pass_says_why_it_leaves_a_gather_alone():
    text = EMBEDDING.replace("(int64[n, 2] ids)", "(int64[n, 2] ids, float[3, 4] table)")
    text = text.replace(
        "<float[3, 4] table = {127, -5, 3, 0, -127, 1, 2, 3, 127, 127, -127, 0}>", ""
    )
    model = onnx.parser.parse_model(text)
    assert quantize_embeddings(model, 8) is model
    columns = ir.from_proto(onnx.parser.parse_model(EMBEDDING.replace("axis = 0", "axis = 1")))
    reasons = [
        CodeEmbeddingTables.refusal(n) for n in (*ir.from_proto(model).graph, *columns.graph)
    ]
    assert "not a constant initializer" in reasons[0] and "axis 1" in reasons[1]
