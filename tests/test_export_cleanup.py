"""The export cleanup passes, on a small hand-built graph: op types first, then outputs under ORT."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper

from cr_edge.export.cleanup import ClearValueMetadataPass, clean

# y = (x * a + b) * x + c, a Horner quadratic, plus what the exporter leaves behind: a dead
# Mul reading an initializer nothing else reads, and torch metadata on nodes and values.
GRAPH = """
<ir_version: 8, opset_import: ["" : 17]>
horner (float[N, 3] x) => (float[N, 3] y)
<float[3] a = {0.5, -1.0, 2.0}, float[3] b = {1.0, 0.0, -0.5}, float[3] c = {0.1, 0.2, 0.3},
 float[3] unused = {9.0, 9.0, 9.0}>
{
    t1 = Mul(x, a)
    t2 = Add(t1, b)
    t3 = Mul(t2, x)
    y = Add(t3, c)
    dead = Mul(x, unused)
}
"""


def _tagged() -> onnx.ModelProto:
    model = onnx.parser.parse_model(GRAPH)
    tag = [onnx.StringStringEntryProto(key="pkg.torch.onnx.stack_trace", value="x" * 200)]
    for node in model.graph.node:
        node.metadata_props.extend(tag)
    for value in [*model.graph.input, *model.graph.output]:
        value.metadata_props.extend(tag)
    model.metadata_props.add(key="cr_edge.version", value="test")
    return model


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})[0]


def test_clean_drops_metadata_dead_nodes_and_their_initializers_and_keeps_the_function():
    before = _tagged()
    after = clean(before)
    assert [n.op_type for n in after.graph.node] == ["Mul", "Add", "Mul", "Add"]
    assert sorted(i.name for i in after.graph.initializer) == ["a", "b", "c"]
    assert not any(n.metadata_props for n in after.graph.node)
    assert not any(v.metadata_props for v in [*after.graph.input, *after.graph.output])
    assert {p.key: p.value for p in after.metadata_props} == {"cr_edge.version": "test"}
    assert after.ByteSize() < before.ByteSize()
    x = np.random.default_rng(0).normal(size=(5, 3)).astype(np.float32)
    expected = (x * [0.5, -1.0, 2.0] + [1.0, 0.0, -0.5]) * x + [0.1, 0.2, 0.3]  # by hand
    np.testing.assert_allclose(_run(after, x), expected, rtol=1e-6)
    np.testing.assert_array_equal(_run(after, x), _run(before, x))


def test_value_metadata_pass_reports_whether_it_changed_anything():
    import onnx_ir as ir

    model = ir.serde.deserialize_model(_tagged())
    assert ClearValueMetadataPass()(model).modified
    assert not ClearValueMetadataPass()(model).modified
    tagged = [v for v in model.graph.inputs if v.metadata_props]
    assert not tagged
    (initial,) = [numpy_helper.to_array(i) for i in _tagged().graph.initializer if i.name == "a"]
    assert initial.tolist() == [0.5, -1.0, 2.0]  # the pass left the weights alone
