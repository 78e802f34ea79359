"""Which oracle samples lie at a kink of a quantized model (see ``cr_edge.validate.kink_skips``).

A kink is an edge of a mask the derivative jumps across: each bound of a guard
(``Clip(a, lo, hi)``, or ``Min(Max(a, lo), hi)``) and ReLU's 0. Both graphs are asked
for each kink's input ``a`` (exposed as an extra output, by node name: quantization
keeps the names of the nodes it does not replace). Per channel, ``err`` is the largest
``|a_quantized - a_fp32|`` over the oracle samples: the quantized model's own error
there. A sample is at a kink when some channel of its fp32 ``a`` lies within that
channel's ``err`` of an edge, which includes every sample whose mask differs between
the two models (the difference is at most ``err``) and those one of the other ways
(exact maths, another batch) may flip.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

from cr_edge.quantize.graph import guards
from cr_edge.quantize.measure import probe

RULE = (
    "fp32 pre-activation within the quantized model's largest per-channel error "
    "of a guard bound or ReLU's 0"
)


@dataclass(frozen=True)
class Edge:
    """A kink's node, the tensor it reads, and its bounds (broadcast as ONNX does)."""

    node: str
    tensor: str
    lo: np.ndarray
    hi: np.ndarray


def edges(model: onnx.ModelProto) -> list[Edge]:
    """Every guard (``quantize.graph.guards``) and ReLU of ``model`` whose bounds are constants."""
    consts = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            consts[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    found = [Edge(g.node, g.input, g.lo, g.hi) for g in guards(model, consts)]
    relus = [n for n in model.graph.node if n.op_type == "Relu"]
    return found + [Edge(n.name, n.input[0], np.zeros(1), np.full(1, np.inf)) for n in relus]


def kink_samples(
    fp32: onnx.ModelProto, quantized: onnx.ModelProto, x: np.ndarray
) -> tuple[np.ndarray, int]:
    """Per sample of ``x``, whether it lies at a kink; and how many kinks were compared.

    A kink whose node the quantized graph no longer has (fused away) is not compared.
    """
    by_name = {n.name: n for n in quantized.graph.node}
    pairs = []
    for edge in edges(fp32):
        node = by_name.get(edge.node)
        if node is not None and node.input:
            pairs.append((edge, node.input[0]))
    at_kink = np.zeros(x.shape[0], dtype=bool)
    if not pairs:
        return at_kink, 0
    name = fp32.graph.input[0].name
    ref = probe(fp32, [e.tensor for e, _ in pairs], {name: x})
    got = probe(quantized, [t for _, t in pairs], {quantized.graph.input[0].name: x})
    for edge, tensor in pairs:
        a, q = ref[edge.tensor].astype(np.float64), got[tensor].astype(np.float64)
        others = tuple(i for i in range(a.ndim) if i != 1)  # channels on axis 1
        err = np.abs(q - a).max(axis=others, keepdims=True)
        near = (np.abs(a - edge.lo) <= err) | (np.abs(a - edge.hi) <= err)
        at_kink |= near.reshape(a.shape[0], -1).any(axis=1)
    return at_kink, len(pairs)
