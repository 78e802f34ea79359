"""Weight-only int8: every layer's weight stored as int8 codes behind a ``DequantizeLinear``.

Activations stay float, so no integer kernel runs and no CPU's accumulator can
overflow: the model computes ``x @ (s * q)`` in float on every machine, and the
file holds one byte per weight. Codes are symmetric (``s = max |w| / 127``, round
to nearest) with one scale per input or per output channel of the layer, whichever
puts less error into its output. Export's folds scale both: the input normalisation
and each polynomial's leading coefficient go into the next layer's input channels,
the Clip guard's rescale ``t = (z - mid) / half`` into the previous layer's output
channels, so either axis can leave the other on wildly different scales. The error a
layer adds is ``dW @ x``, so each axis is scored by ``sum dW[o, i]**2 * rms(x_i)**2``
with each input channel's RMS over the calibration data (all 1 without it). A scale
is 4 bytes, and in a zoo-sized model a few dozen of them outweigh what int8 saves, so
the axis with more scales must at least halve the error to be chosen. The
companion's primal and ``v`` paths share one ``DequantizeLinear`` per weight, scored on
the primal path's input, so both graphs pick the same codes. Codes keep the weight's
layout except a ``transB`` Gemm scaled per input channel, stored input-axis first (a
plain Gemm over ``W^T``) so that ``DequantizeLinear`` scales contiguous rows. 1-D
weights (the sensitivity output's weighted sums) are not layers and stay float.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

LEVELS = 127  # symmetric int8: -127..127 (-128 unused, as onnxruntime's symmetric weights)
MORE_SCALES_GAIN = 2.0  # the axis with more scales must cut the output error this much


def weight_axes(node: ir.Node) -> tuple[int, int] | None:
    """The (input, output) channel axes of the weight (input 1), or None if not a layer."""
    attrs = {k: v.value for k, v in node.attributes.items()}
    if node.op_type == "Gemm":
        return (1, 0) if attrs.get("transB", 0) else (0, 1)
    if node.op_type == "MatMul":
        return (0, 1)
    if node.op_type == "Conv":
        return (1, 0)
    return None


def _along(v: np.ndarray, axis: int, ndim: int) -> np.ndarray:
    """``v`` (one value per index of ``axis``) shaped to broadcast against an ``ndim`` array."""
    shape = [1] * ndim
    shape[axis] = -1
    return v.reshape(shape)


def quantize_weight(w: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 codes of ``w`` with one scale per index of ``axis``, and the scales."""
    others = tuple(i for i in range(w.ndim) if i != axis)
    top = np.abs(w).max(axis=others).astype(np.float64)
    scale = np.where(top > 0, top / LEVELS, 1.0).astype(np.float32)
    codes = np.clip(np.rint(w / _along(scale, axis, w.ndim)), -LEVELS, LEVELS).astype(np.int8)
    return codes, scale


def output_error(w: np.ndarray, axis: int, in_axis: int, rms: np.ndarray | None) -> float:
    """``sum dW**2 * rms(x_i)**2`` of ``w`` coded with one scale per index of ``axis``."""
    codes, scale = quantize_weight(w, axis)
    err = (codes * _along(scale, axis, w.ndim)).astype(np.float64) - w
    if rms is not None and rms.size == w.shape[in_axis]:
        err = err * _along(rms, in_axis, w.ndim)
    return float(np.square(err).sum())


def better_axis(w: np.ndarray, in_axis: int, out_axis: int, rms: np.ndarray | None) -> int:
    """The axis ``w`` is scaled along: the one with less output error, unless it takes more
    scales and does not cut the error by ``MORE_SCALES_GAIN``."""
    error = {a: output_error(w, a, in_axis, rms) for a in (in_axis, out_axis)}
    if w.shape[in_axis] == w.shape[out_axis]:
        return min(error, key=error.get)
    few, many = sorted((in_axis, out_axis), key=lambda a: w.shape[a])
    return many if error[many] * MORE_SCALES_GAIN < error[few] else few


class WeightOnlyInt8(ir.passes.InPlacePass):
    """Store each constant float layer weight as int8 codes + per-channel scale.

    ``input_rms``: per weight name, the RMS of each input channel of the layer that
    reads it on the primal path, over the calibration data.
    """

    def __init__(self, input_rms: dict[str, np.ndarray] | None = None) -> None:
        super().__init__()
        self.input_rms = input_rms or {}

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph = model.graph
        done: dict[tuple, tuple[ir.Value, bool]] = {}  # (weight, axes) -> dequantized, transposed
        modified = False
        for node in list(graph):
            if self.refusal(node) is not None:
                continue
            key = (node.inputs[1].name, weight_axes(node))
            if key not in done:
                done[key] = self._dequantized(graph, node)
            value, transposed = done[key]
            node.replace_input_with(1, value)
            if transposed:
                node.attributes["transB"] = ir.AttrInt64("transB", 0)
            modified = True
        if modified:
            _drop_unused_initializers(graph)
        return ir.passes.PassResult(model, modified)

    def _dequantized(self, graph: ir.Graph, node: ir.Node) -> tuple[ir.Value, bool]:
        """The ``DequantizeLinear`` of ``node``'s weight on its better axis, inserted."""
        weight = node.inputs[1]
        w = weight.const_value.numpy()
        in_axis, out_axis = weight_axes(node)
        rms = self.input_rms.get(weight.name)
        axis = better_axis(w, in_axis, out_axis, rms)
        transposed = node.op_type == "Gemm" and axis == in_axis == 1
        codes, scale = quantize_weight(w.T if transposed else w, 0 if transposed else axis)
        q = ir.Value(name=f"{weight.name}_w8", const_value=ir.tensor(codes))
        s = ir.Value(name=f"{weight.name}_w8_scale", const_value=ir.tensor(scale))
        graph.register_initializer(q)
        graph.register_initializer(s)
        dq = ir.Node(
            "",
            "DequantizeLinear",
            [q, s],
            attributes={"axis": ir.AttrInt64("axis", 0 if transposed else axis)},
            name=f"{weight.name}_w8_dequantize",
        )
        graph.insert_before(node, dq)
        dq.outputs[0].name = f"{weight.name}_w8_dequantized"
        return dq.outputs[0], transposed

    @staticmethod
    def refusal(node: ir.Node) -> str | None:
        """Why ``node``'s weight is not stored as int8 (None: it is)."""
        if weight_axes(node) is None:
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
