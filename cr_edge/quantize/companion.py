"""The derivative companion at the deployed precision: the derivative of the int8 model.

The deployed int8 model is piecewise constant in ``x``; the derivative that means
something is that of the same function with its *quantized weights* and its
activation quantizers taken as the identity (the straight-through view). So in the
companion only the nodes the primal model also has are quantized, and the
derivative-only nodes (the ``v`` path, ``p'(z)``) stay float but multiply by the
very int8 weights the primal path dequantizes. Quantizing the ``v`` path as well
would measure quantization noise of a tensor the deployed model never computes.

The tying is two onnx-ir passes rather than rewrite rules: a weight is dequantized once,
however many ``v``-path nodes read it, and the float weights go once nothing reads them.
"""

from __future__ import annotations

import onnx
import onnx_ir as ir

from cr_edge.errors import ExportError
from cr_edge.quantize.graph import LINEAR
from cr_edge.quantize.unused import DropUnusedInitializers

MS_DOMAIN = "com.microsoft"


def derivative_only(model: onnx.ModelProto) -> set[str]:
    """Names of the nodes that do not feed the first output (``y``)."""
    producer = {out: node for node in model.graph.node for out in node.output}
    needed: set[str] = set()
    stack = [model.graph.output[0].name]
    while stack:
        node = producer.get(stack.pop())
        if node is not None and node.name not in needed:
            needed.add(node.name)
            stack.extend(node.input)
    return {n.name for n in model.graph.node} - needed


class TieToDeployedWeights(ir.passes.InPlacePass):
    """Point the linear ``nodes`` (left float) at the int8 weights of the primal path.

    onnxruntime names a quantized weight ``W_quantized`` with ``W_scale`` and
    ``W_zero_point``; static QDQ already dequantizes it for the primal path, dynamic
    mode does not, so a ``DequantizeLinear`` is added once per weight, at the start of
    the graph. A weight no layer reads any more is dropped.
    """

    def __init__(self, nodes: set[str]) -> None:
        super().__init__()
        self.nodes = nodes

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph = model.graph
        inits = graph.initializers
        dequantized = {
            n.inputs[0].name: n.outputs[0] for n in graph if n.op_type == "DequantizeLinear"
        }
        added: list[ir.Node] = []
        modified = False
        for node in list(graph):
            if node.name not in self.nodes or node.op_type not in LINEAR:
                continue
            weight = node.inputs[1]
            if weight is None or not weight.is_initializer():
                continue  # static QDQ already fed it the dequantized weight
            if len(weight.const_value.shape) == 1:  # a weighted sum (the sensitivity's row
                continue  # norms), not a layer: nothing on the primal path to share, it stays float
            quantized = f"{weight.name}_quantized"
            if quantized not in dequantized:
                codes = [inits.get(f"{weight.name}{end}") for end in _CODES]
                if None in codes:
                    raise ExportError(
                        f"companion node {node.name!r}: no int8 weight {quantized!r} "
                        "on the primal path to share"
                    )
                axis = 1 if node.op_type == "MatMul" else 0  # the output-channel axis of W
                name = f"{weight.name}__deployed"
                dq = ir.Node("", "DequantizeLinear", codes, [ir.AttrInt64("axis", axis)], name=name)
                dq.outputs[0].name = name
                added.append(dq)
                dequantized[quantized] = dq.outputs[0]
            node.replace_input_with(1, dequantized[quantized])
            modified = True
        if added:
            graph.insert_before(next(iter(graph)), added)
        return ir.passes.PassResult(model, DropUnusedInitializers()(model).modified or modified)


class TieToDeployedCodes(ir.passes.InPlacePass):
    """Point the derivative-only MatMuls ``nodes`` at the primal path's ``MatMulNBits`` codes.

    onnxruntime's quantizer names the codes of weight ``W`` ``W_Q<bits>`` (scales
    ``W_scales``). A ``v``-path MatMul reading ``W`` becomes a ``MatMulNBits`` over the
    same codes at accuracy level 0: float arithmetic with the deployed weights, the
    straight-through view (the activation rounding of level 4 is a quantizer, taken as
    the identity). A weight the primal path left float (a 1-D weighted sum) stays float.
    """

    def __init__(self, nodes: set[str]) -> None:
        super().__init__()
        self.nodes = nodes

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph = model.graph
        quantized = {
            n.inputs[1].name: n
            for n in graph
            if n.op_type == "MatMulNBits" and n.name not in self.nodes
        }
        modified = False
        for node in list(graph):
            if node.name not in self.nodes or node.op_type != "MatMul":
                continue
            weight = node.inputs[1].name
            primal = next((q for w, q in quantized.items() if w.rsplit("_Q", 1)[0] == weight), None)
            if primal is None:
                continue
            attrs = [a for k, a in primal.attributes.items() if k != "accuracy_level"]
            tied = ir.Node(
                MS_DOMAIN,
                "MatMulNBits",
                [node.inputs[0], *primal.inputs[1:]],
                attrs,
                name=f"{node.name}__deployed",
            )
            ir.convenience.replace_nodes_and_values(
                graph, node, [node], [tied], node.outputs, tied.outputs
            )
            modified = True
        return ir.passes.PassResult(model, DropUnusedInitializers()(model).modified or modified)


_CODES = ("_quantized", "_scale", "_zero_point")  # onnxruntime's names for W's int8 codes


def tie_weights(model: onnx.ModelProto, nodes: set[str]) -> onnx.ModelProto:
    """A copy of ``model`` with ``TieToDeployedWeights(nodes)`` applied (``model`` if no change)."""
    irm = ir.from_proto(model)
    return ir.to_proto(irm) if TieToDeployedWeights(nodes)(irm).modified else model


def tie_nbits_(model: onnx.ModelProto, nodes: set[str]) -> None:
    """``TieToDeployedCodes(nodes)`` applied to ``model`` in place."""
    irm = ir.from_proto(model)
    if TieToDeployedCodes(nodes)(irm).modified:
        model.CopyFrom(ir.to_proto(irm))
