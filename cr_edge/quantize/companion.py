"""The derivative companion at the deployed precision: the derivative of the int8 model.

The deployed int8 model is piecewise constant in ``x``; the derivative that means
something is that of the same function with its *quantized weights* and its
activation quantizers taken as the identity (the straight-through view). So in the
companion only the nodes the primal model also has are quantized, and the
derivative-only nodes (the ``v`` path, ``p'(z)``) stay float but multiply by the
very int8 weights the primal path dequantizes. Quantizing the ``v`` path as well
would measure quantization noise of a tensor the deployed model never computes.
"""

from __future__ import annotations

import onnx
from onnx import helper

from cr_edge.errors import ExportError
from cr_edge.quantize.graph import LINEAR


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


def tie_weights_(model: onnx.ModelProto, nodes: set[str]) -> None:
    """Point the linear ``nodes`` (left float) at the int8 weights of the primal path, in place.

    onnxruntime names a quantized weight ``W_quantized`` with ``W_scale`` and
    ``W_zero_point``; static QDQ already dequantizes it for the primal path, dynamic
    mode does not, so a ``DequantizeLinear`` is added once per weight.
    """
    inits = {t.name: t for t in model.graph.initializer}
    dequantized = {
        n.input[0]: n.output[0] for n in model.graph.node if n.op_type == "DequantizeLinear"
    }
    added = []
    for node in model.graph.node:
        if node.name not in nodes or node.op_type not in LINEAR:
            continue
        weight = node.input[1]
        if weight not in inits:  # static QDQ already fed it the dequantized weight
            continue
        if len(inits[weight].dims) == 1:  # a weighted sum (the sensitivity's row norms),
            continue  # not a layer: nothing on the primal path to share, it stays float
        quantized = f"{weight}_quantized"
        if quantized not in inits:
            raise ExportError(
                f"companion node {node.name!r}: no int8 weight {quantized!r} "
                "on the primal path to share"
            )
        if quantized not in dequantized:
            dequantized[quantized] = f"{weight}__deployed"
            axis = 1 if node.op_type == "MatMul" else 0  # the output-channel axis of W
            added.append(
                helper.make_node(
                    "DequantizeLinear",
                    [quantized, f"{weight}_scale", f"{weight}_zero_point"],
                    [dequantized[quantized]],
                    name=f"{weight}__deployed",
                    axis=axis,
                )
            )
        node.input[1] = dequantized[quantized]
    for i, node in enumerate(added):
        model.graph.node.insert(i, node)
    used = {i for n in model.graph.node for i in n.input}
    keep = [t for t in model.graph.initializer if t.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep)


def tie_nbits_(model: onnx.ModelProto, nodes: set[str]) -> None:
    """Point the derivative-only MatMuls ``nodes`` at the primal path's ``MatMulNBits`` codes.

    onnxruntime's quantizer names the codes of weight ``W`` ``W_Q<bits>`` (scales
    ``W_scales``). A ``v``-path MatMul reading ``W`` becomes a ``MatMulNBits`` over the
    same codes at accuracy level 0: float arithmetic with the deployed weights, the
    straight-through view (the activation rounding of level 4 is a quantizer, taken as
    the identity). A weight the primal path left float (a 1-D weighted sum) stays float.
    """
    quantized = {
        n.input[1]: n
        for n in model.graph.node
        if n.op_type == "MatMulNBits" and n.name not in nodes
    }
    for i, node in enumerate(model.graph.node):
        if node.name not in nodes or node.op_type != "MatMul":
            continue
        primal = next(
            (q for w, q in quantized.items() if w.rsplit("_Q", 1)[0] == node.input[1]), None
        )
        if primal is None:
            continue
        attrs = {
            a.name: helper.get_attribute_value(a)
            for a in primal.attribute
            if a.name != "accuracy_level"
        }
        tied = helper.make_node(
            "MatMulNBits",
            [node.input[0], *primal.input[1:]],
            list(node.output),
            name=f"{node.name}__deployed",
            domain="com.microsoft",
            **attrs,
        )
        model.graph.node[i].CopyFrom(tied)
    used = {i for n in model.graph.node for i in n.input}
    keep = [t for t in model.graph.initializer if t.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep)
