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
import onnx_ir as ir

from cr_edge.quantize.measure import probe

RANGE_FLOOR = 0.1  # activation ranges below this share of the median count as this
Scales = dict[str, np.ndarray]  # weight initializer -> per-input-channel scale


def gemm_users(graph: ir.Graph) -> dict[str, list[ir.Node]]:
    """Constant ``B`` (with ``transB = 1``) -> the Gemms that multiply by it, in graph order."""
    users: dict[str, list[ir.Node]] = defaultdict(list)
    for node in graph:
        if (
            node.op_type == "Gemm"
            and len(node.inputs) > 1
            and node.inputs[1] is not None
            and node.inputs[1].is_initializer()
            and node.attributes.get_int("transB", 0) == 1
            and not node.attributes.get_int("transA", 0)
        ):
            users[node.inputs[1].name].append(node)
    return users


class EqualizeGemmInputs(ir.passes.InPlacePass):
    """Divide each shared weight's columns by its scale and multiply each Gemm's input by it.

    An onnx-ir pass rather than a rewrite rule: one weight is read by several Gemms (the
    companion's primal and ``v`` paths), and it must be rescaled once, with one scale
    initializer that every one of its Gemms multiplies by. Weights without a scale in
    ``scales`` are left alone.
    """

    def __init__(self, scales: Scales) -> None:
        super().__init__()
        self.scales = scales

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph = model.graph
        modified = False
        for weight, gemms in gemm_users(graph).items():
            if weight not in self.scales:
                continue
            s = self.scales[weight]
            value = gemms[0].inputs[1]
            w = value.const_value.numpy().astype(np.float64)
            value.const_value = ir.tensor((w / s).astype(np.float32), name=weight)
            scale = ir.Value(
                name=f"{weight}__eq_scale",
                const_value=ir.tensor(s.astype(np.float32), name=f"{weight}__eq_scale"),
            )
            graph.register_initializer(scale)
            for gemm in gemms:
                x = gemm.inputs[0]
                mul = ir.Node("", "Mul", [x, scale], name=f"{gemm.name}__equalize")
                mul.outputs[0].name = f"{x.name}__eq_{gemm.name}"
                graph.insert_before(gemm, mul)
                gemm.replace_input_with(0, mul.outputs[0])
            modified = True
        return ir.passes.PassResult(model, modified)


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
    irm = ir.from_proto(model)
    users = gemm_users(irm.graph)
    scales = dict(scales or {})
    todo = sorted({g.inputs[0].name for w, gs in users.items() if w not in scales for g in gs})
    ranges = input_ranges(model, todo, feeds) if todo else {}
    for weight, gemms in users.items():
        if weight not in scales:
            w = gemms[0].inputs[1].const_value.numpy().astype(np.float64)
            scales[weight] = _scale(w, np.max([ranges[g.inputs[0].name] for g in gemms], axis=0))
    EqualizeGemmInputs(scales)(irm)
    return ir.to_proto(irm), scales


def _scale(w: np.ndarray, r_a: np.ndarray) -> np.ndarray:
    # A channel that barely moves in the calibration set (a border pixel of the digits)
    # counts as a tenth of the median range: its scale would otherwise blow up and an
    # input outside the calibration set would then swamp the per-tensor range.
    r_a = np.maximum(r_a.astype(np.float64), RANGE_FLOOR * np.median(r_a))
    r_w = np.maximum(np.abs(w).max(axis=0), 1e-30)
    s = np.sqrt(r_w / np.maximum(r_a, 1e-30))
    return s / np.exp(np.mean(np.log(s)))  # geometric mean 1: magnitudes stay where they were
