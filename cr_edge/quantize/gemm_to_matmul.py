"""Gemm -> MatMul (+ Add), an onnx-ir pass: what onnxruntime's dynamic quantizer needs.

onnxruntime's dynamic quantizer has integer kernels for MatMul, not Gemm, so without
this rewrite ``--mode dynamic`` would leave a Gemm-only MLP untouched. Only a plain
Gemm is rewritten (constant ``B``, no ``transA``, ``alpha = beta = 1``); ``refusal``
says why any other is left alone. A ``transB`` weight is transposed once into a new
initializer shared by every Gemm that used it (the JVP companion's primal and ``v``
paths), and the original is dropped when nothing reads it any more.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir


class GemmToMatMul(ir.passes.InPlacePass):
    """Rewrite every plain Gemm as ``MatMul(A, B)`` followed by ``Add(., C)`` when it has a bias."""

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph = model.graph
        transposed: dict[str, ir.Value] = {}
        modified = False
        for node in list(graph):
            if self.refusal(node) is not None:
                continue
            a, b = node.inputs[0], node.inputs[1]
            if _attr(node, "transB", 0):
                if b.name not in transposed:
                    t = np.ascontiguousarray(b.const_value.numpy().T)
                    value = ir.Value(name=f"{b.name}__t", const_value=ir.tensor(t))
                    graph.register_initializer(value)
                    transposed[b.name] = value
                b = transposed[b.name]
            bias = node.inputs[2] if len(node.inputs) > 2 else None
            base = node.name or node.outputs[0].name  # unnamed nodes: name by their output
            matmul = ir.Node("", "MatMul", [a, b], name=f"{base}__matmul")
            new = [matmul]
            if bias is not None:
                new.append(ir.Node("", "Add", [matmul.outputs[0], bias], name=f"{base}__bias"))
            graph.insert_before(node, new)
            out = new[-1].outputs[0]
            out.name, out.type, out.shape = (
                node.outputs[0].name,
                node.outputs[0].type,
                node.outputs[0].shape,
            )
            node.outputs[0].replace_all_uses_with(out, replace_graph_outputs=True)
            graph.remove(node, safe=True)
            modified = True
        for name, value in list(graph.initializers.items()):
            if not value.uses() and not value.is_graph_output():
                del graph.initializers[name]
        return ir.passes.PassResult(model, modified)

    @staticmethod
    def refusal(node: ir.Node) -> str | None:
        """Why ``node`` is not rewritten (None: it is)."""
        if node.op_type != "Gemm" or node.domain not in ("", "ai.onnx"):
            return "not a Gemm"
        if len(node.inputs) < 2 or node.inputs[1] is None or node.inputs[1].const_value is None:
            return "B is not a constant initializer: no integer weight to quantize"
        if _attr(node, "transA", 0):
            return "transA would need a Transpose of the activations"
        if _attr(node, "alpha", 1.0) != 1.0 or _attr(node, "beta", 1.0) != 1.0:
            return "alpha/beta != 1 would need extra Muls"
        return None


def _attr(node: ir.Node, name: str, default):
    attr = node.attributes.get(name)
    return default if attr is None else attr.value


def gemm_to_matmul(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` with ``GemmToMatMul`` applied."""
    irm = ir.from_proto(model)
    GemmToMatMul()(irm)
    return ir.to_proto(irm)
