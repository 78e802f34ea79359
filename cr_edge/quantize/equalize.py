"""Cross-layer equalization for Gemm inputs: the pass that makes int8 weights work here.

Export folds each polynomial's leading coefficient into the next layer (the chain
computes ``p(z)/a3``), and folds the input normalisation into the first layer. Both
leave the weight *columns* on wildly different scales (the chain output of a channel
with a small ``a3`` is huge and its column tiny), which per-output-channel int8 cannot
resolve: one large column sets the step of every row. Scaling input channel ``c`` by
``s_c`` and weight column ``c`` by ``1/s_c`` leaves the function unchanged; with
``s_c = sqrt(r_w[c] / r_a[c])`` (Nagel et al. 2019, data-free quantization) the column
ranges and the activation ranges both become ``sqrt(r_w r_a)``, as even as one scale
can make them. The cost is one float Mul per layer input.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import onnx
from onnx import helper, numpy_helper

from cr_edge.quantize.measure import probe

RANGE_FLOOR = 0.1  # activation ranges below this share of the median count as this
Scales = dict[str, np.ndarray]  # weight initializer -> per-input-channel scale


def gemm_users(model: onnx.ModelProto) -> dict[str, list[onnx.NodeProto]]:
    """Constant ``B`` (with ``transB = 1``) -> the Gemms that multiply by it."""
    inits = {t.name for t in model.graph.initializer}
    users: dict[str, list[onnx.NodeProto]] = defaultdict(list)
    for node in model.graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if (
            node.op_type == "Gemm"
            and node.input[1] in inits
            and attrs.get("transB", 0) == 1
            and not attrs.get("transA", 0)
        ):
            users[node.input[1]].append(node)
    return users


def input_ranges(
    model: onnx.ModelProto, names: list[str], feeds: dict[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """Per-channel ``max |a|`` of the tensors ``names`` (axis 1) over the calibration feeds."""
    got = probe(model, names, feeds)
    return {
        n: np.abs(a).reshape(a.shape[0], a.shape[1], -1).max(axis=(0, 2)) for n, a in got.items()
    }


def equalize(
    model: onnx.ModelProto, feeds: dict[str, np.ndarray], scales: Scales | None = None
) -> tuple[onnx.ModelProto, Scales]:
    """A copy of ``model`` with every constant-weight Gemm input equalized, and the scales.

    ``scales`` from the primal model are reused for its derivative companion, whose
    Gemms share the weights: both graphs must then hold the same (deployed) weights.
    """
    out = onnx.ModelProto()
    out.CopyFrom(model)
    users = gemm_users(out)
    inits = {t.name: t for t in out.graph.initializer}
    scales = dict(scales or {})
    todo = sorted({g.input[0] for w, gs in users.items() if w not in scales for g in gs})
    ranges = input_ranges(out, todo, feeds) if todo else {}
    new_nodes: dict[str, onnx.NodeProto] = {}  # Gemm name -> the Mul placed before it
    for weight, gemms in users.items():
        w = numpy_helper.to_array(inits[weight]).astype(np.float64)
        if weight not in scales:
            scales[weight] = _scale(w, np.max([ranges[g.input[0]] for g in gemms], axis=0))
        s = scales[weight]
        inits[weight].CopyFrom(numpy_helper.from_array((w / s).astype(np.float32), weight))
        scale = f"{weight}__eq_scale"
        out.graph.initializer.append(numpy_helper.from_array(s.astype(np.float32), scale))
        for g in gemms:
            scaled = f"{g.input[0]}__eq_{g.name}"
            new_nodes[g.name] = helper.make_node(
                "Mul", [g.input[0], scale], [scaled], name=f"{g.name}__equalize"
            )
            g.input[0] = scaled
    nodes = []
    for node in out.graph.node:
        if node.name in new_nodes:
            nodes.append(new_nodes[node.name])
        nodes.append(node)
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    return out, scales


def _scale(w: np.ndarray, r_a: np.ndarray) -> np.ndarray:
    # A channel that barely moves in the calibration set (a border pixel of the digits)
    # counts as a tenth of the median range: its scale would otherwise blow up and an
    # input outside the calibration set would then swamp the per-tensor range.
    r_a = np.maximum(r_a.astype(np.float64), RANGE_FLOOR * np.median(r_a))
    r_w = np.maximum(np.abs(w).max(axis=0), 1e-30)
    s = np.sqrt(r_w / np.maximum(r_a, 1e-30))
    return s / np.exp(np.mean(np.log(s)))  # geometric mean 1: magnitudes stay where they were
