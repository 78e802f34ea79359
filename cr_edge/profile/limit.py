"""The distance to the limit: how much of a call is arithmetic, and how much is dispatch.

Two figures per row, measured in the same interleaved rounds as the model itself:

* FLOPs per sample, counted from the ONNX graph (a multiply-add is 2; an elementwise
  node 1 per output element; integer ops of a quantized graph counted alike), and the
  achieved GFLOP/s at the measured p50.
* The dispatch floor: the latency of a graph with the same inputs and outputs and no
  arithmetic (each output an ``Identity`` of a constant of its shape), loaded by the
  same runtime with the same options. What the model takes beyond it is arithmetic;
  at batch 1 a 5k-multiply-add MLP is nearly all floor, which says that a smaller or
  a quantized model cannot make that call much faster.

``.ort`` and ``.pte`` files are counted from the ``.onnx`` beside them, when there is one.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir

from cr_edge.runtimes.runtime import Session
from cr_edge.runtimes.safe_load import Artifact

LINEAR_MACS = frozenset({"Gemm", "MatMul", "MatMulInteger", "FusedGemm", "FusedMatMul"})
CONV = frozenset({"Conv", "ConvInteger", "FusedConv"})
ELEMENTWISE = frozenset(
    {"Add", "Sub", "Mul", "Div", "Min", "Max", "Clip", "Relu", "Gelu", "Sigmoid", "Tanh", "Erf"}
)
FLOOR_OPSET = 13


def flops_per_sample(artifact: Artifact) -> int | None:
    """Arithmetic per sample of the graph ``artifact`` runs, or None when no ONNX is at hand."""
    model = artifact.model
    if model is None:
        onnx_path = artifact.path.with_suffix(".onnx")
        if not onnx_path.is_file():
            return None
        model = onnx.load(onnx_path, load_external_data=False)
    inferred = onnx.shape_inference.infer_shapes(model)
    shapes = {
        v.name: [
            d.dim_value if d.HasField("dim_value") else None for d in v.type.tensor_type.shape.dim
        ]
        for v in (*inferred.graph.value_info, *inferred.graph.output, *inferred.graph.input)
    }
    for init in model.graph.initializer:
        shapes[init.name] = list(init.dims)
    total = 0
    for node in model.graph.node:
        out = _per_sample(shapes.get(node.output[0]))
        if node.op_type in LINEAR_MACS:
            weight = shapes.get(node.input[1]) or []
            k = (
                weight[1]
                if node.op_type == "Gemm" and _trans_b(node)
                else weight[0]
                if weight
                else 0
            )
            total += 2 * (k or 0) * (out or 0)
        elif node.op_type in CONV:
            weight = shapes.get(node.input[1]) or []
            per_output = int(np.prod(weight[1:])) if len(weight) > 1 else 0
            total += 2 * per_output * (out or 0)
        elif node.op_type in ELEMENTWISE:
            total += out or 0
    return total


def _trans_b(node: onnx.NodeProto) -> bool:
    return any(a.name == "transB" and a.i == 1 for a in node.attribute)


def _per_sample(shape: list[int | None] | None) -> int | None:
    """Elements per sample: every axis but the (possibly symbolic) batch axis."""
    if not shape or any(d is None for d in shape[1:]):
        return None
    return int(np.prod(shape[1:]))


def floor_artifact(session: Session, feeds: dict[str, np.ndarray], path: Path) -> Artifact:
    """Write to ``path`` a graph with ``session``'s inputs and outputs and nothing between them.

    Each output is an ``Identity`` of a constant shaped like that output at this batch, so
    a run does what any run must (take the inputs, hand back buffers of the outputs'
    sizes) and no arithmetic. Built as an onnx-ir graph.
    """
    outputs = session.run(feeds)
    graph = ir.Graph(
        [_typed(ir.Value(name=name), value) for name, value in feeds.items()],
        [],
        nodes=[],
        opset_imports={"": FLOOR_OPSET},
        name="dispatch_floor",
    )
    for spec, value in zip(session.outputs, outputs, strict=True):
        name = f"{spec.name}_floor"
        constant = ir.Value(name=name, const_value=ir.tensor(np.zeros_like(value), name=name))
        graph.register_initializer(constant)
        identity = ir.Node("", "Identity", [constant], name="")  # unnamed: no name to invent
        graph.append(identity)
        result = _typed(identity.outputs[0], value)
        result.name = spec.name
        graph.outputs.append(result)
    # ir_version 8: loadable by every onnxruntime release cr-edge supports
    model = ir.serde.serialize_model(ir.Model(graph, ir_version=8))
    data = model.SerializeToString()
    path.write_bytes(data)
    return Artifact(path, "onnx", data, model)


def _typed(value: ir.Value, like: np.ndarray) -> ir.Value:
    """``value`` typed as ``like`` (an empty array counts as float32) with its shape."""
    dtype = ir.DataType.from_numpy(like.dtype) if like.size else ir.DataType.FLOAT
    value.type, value.shape = ir.TensorType(dtype), ir.Shape(like.shape)
    return value


def split(p50_ms: float, floor_ms: float, flops: int | None, batch: int) -> dict[str, float | None]:
    """The row's figures: FLOPs, GFLOP/s, the floor, and the dispatch/arithmetic shares."""
    dispatch = min(max(floor_ms / p50_ms, 0.0), 1.0) if p50_ms > 0 else 0.0
    return {
        "flops_per_sample": flops,
        "gflops": flops * batch / (p50_ms * 1e6) if flops is not None and p50_ms > 0 else None,
        "floor_ms": floor_ms,
        "dispatch_share": dispatch,
        "arithmetic_share": 1.0 - dispatch,
    }
