"""Weight-only int8: every layer's weight stored as int8 codes behind a ``DequantizeLinear``.

Activations stay float, so no integer kernel runs and no CPU's accumulator can
overflow: the model computes ``x @ (s * q)`` in float on every machine, and the
file holds one byte per weight. Codes are symmetric (``s = max |w| / 127``, round
to nearest) per *input* channel of a Gemm/MatMul: export folds the input
normalisation and each polynomial's leading coefficient into the next layer, which
leaves the weight columns on wildly different scales, so one scale per column
resolves them without the float Mul that cross-layer equalization would need
(with float activations nothing else needs an even range). The codes are stored
input-axis first (a ``transB`` Gemm becomes a plain one over ``W^T``), so that
``DequantizeLinear`` scales contiguous rows. Conv weights are per output channel.
A weight shared by several layers (the companion's primal and ``v`` paths) gets one
``DequantizeLinear``, so both paths multiply by the same deployed weights. 1-D
weights (the sensitivity output's weighted sums) are not layers and stay float.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

LEVELS = 127  # symmetric int8: -127..127 (-128 unused, as onnxruntime's symmetric weights)


def scale_axis(node: ir.Node) -> int | None:
    """The axis of the weight (input 1) that gets one scale each, or None if not a layer."""
    attrs = {k: v.value for k, v in node.attributes.items()}
    if node.op_type == "Gemm":
        return 1 if attrs.get("transB", 0) else 0
    if node.op_type in ("MatMul", "Conv"):
        return 0
    return None


def quantize_weight(w: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 codes of ``w`` with one scale per index of ``axis``, and the scales."""
    others = tuple(i for i in range(w.ndim) if i != axis)
    top = np.abs(w).max(axis=others).astype(np.float64)
    scale = np.where(top > 0, top / LEVELS, 1.0).astype(np.float32)
    shape = [1] * w.ndim
    shape[axis] = -1
    codes = np.clip(np.rint(w / scale.reshape(shape)), -LEVELS, LEVELS).astype(np.int8)
    return codes, scale


class WeightOnlyInt8(ir.passes.InPlacePass):
    """Store each constant float layer weight as int8 codes + per-channel scale."""

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph = model.graph
        done: dict[tuple[str, int], ir.Value] = {}
        modified = False
        for node in list(graph):
            if self.refusal(node) is not None:
                continue
            weight, axis = node.inputs[1], scale_axis(node)
            transposed = node.op_type == "Gemm" and axis == 1
            key = (weight.name, transposed)
            if key not in done:
                w = weight.const_value.numpy()
                codes, scale = quantize_weight(w.T if transposed else w, 0)
                q = ir.Value(name=f"{weight.name}_w8", const_value=ir.tensor(codes))
                s = ir.Value(name=f"{weight.name}_w8_scale", const_value=ir.tensor(scale))
                graph.register_initializer(q)
                graph.register_initializer(s)
                dq = ir.Node(
                    "",
                    "DequantizeLinear",
                    [q, s],
                    attributes={"axis": ir.AttrInt64("axis", 0)},
                    name=f"{weight.name}_w8_dequantize",
                )
                graph.insert_before(node, dq)
                done[key] = dq.outputs[0]
                done[key].name = f"{weight.name}_w8_dequantized"
            node.replace_input_with(1, done[key])
            if transposed:
                node.attributes["transB"] = ir.AttrInt64("transB", 0)
            modified = True
        if modified:
            _drop_unused_initializers(graph)
        return ir.passes.PassResult(model, modified)

    @staticmethod
    def refusal(node: ir.Node) -> str | None:
        """Why ``node``'s weight is not stored as int8 (None: it is)."""
        if scale_axis(node) is None:
            return f"{node.op_type} is not a layer"
        weight = node.inputs[1] if len(node.inputs) > 1 else None
        if weight is None or weight.const_value is None:
            return "the weight is not a constant initializer"
        if weight.dtype != ir.DataType.FLOAT:
            return f"the weight is {weight.dtype}, not float32"
        if len(weight.shape) < 2:
            return "a 1-D weight is a weighted sum, not a layer"
        if node.op_type == "MatMul" and len(weight.shape) != 2:
            return "a batched MatMul weight has no single input axis"
        if (
            node.op_type == "Gemm"
            and node.attributes.get("transA")
            and node.attributes["transA"].value
        ):
            return "a transA Gemm"
        return None


def _drop_unused_initializers(graph: ir.Graph) -> None:
    """The float weights the int8 codes replaced: nothing reads them any more."""
    for name, value in list(graph.initializers.items()):
        if not value.uses() and not value.is_graph_output():
            del graph.initializers[name]
