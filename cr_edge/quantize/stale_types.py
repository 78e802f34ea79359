"""Forget the recorded types of a graph's inner values: an onnx-ir pass.

A converter that changes precisions (onnxruntime's fp16 converter) can leave the types
it recorded for intermediate values (``value_info``) stale: a tensor a Cast now makes
fp32 still says fp16, and strict shape inference then refuses the graph. The types
the graph itself fixes are the truth, so this pass keeps those of the graph's inputs
and outputs (the contract), gives each initializer its tensor's, and clears every
other value's, for shape inference to fill in again.
"""

from __future__ import annotations

import onnx_ir as ir


class ForgetStaleTypes(ir.passes.InPlacePass):
    """Clear the type and shape of every intermediate value; initializers take their tensor's."""

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph = model.graph
        modified = False
        for value in (*graph.initializers.values(), *(o for n in graph for o in n.outputs)):
            if value.is_graph_input() or value.is_graph_output():
                continue
            tensor = value.const_value if value.is_initializer() else None
            dtype = None if tensor is None else ir.TensorType(tensor.dtype)
            shape = None if tensor is None else tensor.shape
            if value.type != dtype or value.shape != shape:
                value.type, value.shape = dtype, shape
                modified = True
        return ir.passes.PassResult(model, modified)
