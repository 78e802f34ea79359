"""The float32 rounding error of an exported graph: the graph against its own float64 copy.

A fixed atol of 1e-5 is a guess about a model. A float32 Horner chain commits up to
``gamma_2n * sum_k |a_k| |z|^k`` (Higham 5.1), so a net trained without DREG, whose
coefficients are large and whose terms cancel, misses 1e-5 while being exactly the model
that was trained. Here the same graph runs twice in onnxruntime, as exported and with
every float tensor widened to float64, on the oracle's inputs: the difference is the
graph's own rounding error on exactly those inputs, for outputs and for the companion's
JVPs, measured rather than bounded (a worst-case bound across layers is orders looser).
onnxruntime's CPU provider has no float64 ``Conv`` or ``AveragePool``: a conv net's wide
copy then runs in onnx's reference evaluator (numpy, float64 throughout; seconds for an
oracle of a thousand MNIST-1D samples). Without it a conv net got no measured error, fell
back to the 1e-5 floor, and a correct export with logits in the hundreds failed its own
check (error 3.8e-5, 2.2x inside ``ROUNDING_SAFETY x`` the measured rounding).
numpy, onnx, onnx-ir and onnxruntime only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
from onnx.reference import ReferenceEvaluator
from onnxruntime.capi.onnxruntime_pybind11_state import NotImplemented as NoKernel

_TINY = float(np.finfo(np.float32).eps)


@dataclass(frozen=True)
class RoundingError:
    """Measured float32-vs-float64 differences of one export on the oracle's inputs."""

    output_abs: float  # max |y32 - y64| over the primal's and the companion's y
    jvp_rel: float | None  # max per-sample ||jvp32 - jvp64|| / ||jvp64||; None: no companion


def float64_copy(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with every float32 value, initializer, constant and cast widened to float64."""
    graph_model = ir.from_proto(model)
    for value in _values(graph_model.graph):
        if value.type is not None and value.type.dtype == ir.DataType.FLOAT:
            value.type = ir.TensorType(ir.DataType.DOUBLE)
        const = value.const_value
        if const is not None and const.dtype == ir.DataType.FLOAT:
            value.const_value = ir.tensor(const.numpy().astype(np.float64), name=const.name)
    for node in graph_model.graph.all_nodes():
        if node.op_type == "Cast" and node.attributes["to"].as_int() == ir.DataType.FLOAT:
            node.attributes["to"] = ir.AttrInt64("to", ir.DataType.DOUBLE)
        if node.op_type == "Constant" and "value" in node.attributes:
            tensor = node.attributes["value"].as_tensor()
            if tensor.dtype == ir.DataType.FLOAT:
                widened = ir.tensor(tensor.numpy().astype(np.float64), name=tensor.name)
                node.attributes["value"] = ir.AttrTensor("value", widened)
    return ir.to_proto(graph_model)


def measure(
    primal: bytes, companion: bytes | None, x: np.ndarray, v: np.ndarray | None
) -> RoundingError:
    """Run ``primal`` (and ``companion``, inputs ``x, v``) in float32 and float64 on the CPU."""
    y32, y64 = _both(primal, {"x": x})
    output_abs = _max_abs(y32[0], y64[0])
    jvp_rel = None
    if companion is not None and v is not None:
        c32, c64 = _both(companion, {"x": x, "v": v.astype(x.dtype)})
        output_abs = max(output_abs, _max_abs(c32[0], c64[0]))
        n = x.shape[0]
        diff = np.linalg.norm((c32[1].astype(np.float64) - c64[1]).reshape(n, -1), axis=1)
        size = np.linalg.norm(c64[1].reshape(n, -1), axis=1)
        jvp_rel = float(np.max(diff / np.maximum(size, _TINY)))
    return RoundingError(output_abs, jvp_rel)


def _both(data: bytes, feeds: dict[str, np.ndarray]) -> tuple[list, list]:
    model = onnx.load_model_from_string(data)
    wide = float64_copy(model).SerializeToString()
    narrow_feeds = {k: a.astype(np.float32) for k, a in feeds.items()}
    wide_feeds = {k: a.astype(np.float64) for k, a in feeds.items()}
    try:
        wide_outputs = _run(wide, wide_feeds)
    except NoKernel:  # an op without a float64 kernel in onnxruntime (Conv, AveragePool)
        wide_outputs = ReferenceEvaluator(wide).run(None, wide_feeds)
    return _run(data, narrow_feeds), wide_outputs


def _run(data: bytes, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    options = ort.SessionOptions()
    # Graph rewrites (fusions) may differ between the two widths; judge the graph as written.
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    return session.run(None, {name: feeds[name] for name in names})


def _max_abs(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64))))


def _values(graph: ir.Graph):
    yield from graph.inputs
    yield from graph.outputs
    yield from graph.initializers.values()
    for node in graph.all_nodes():
        yield from node.outputs
