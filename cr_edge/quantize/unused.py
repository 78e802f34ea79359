"""Drop the initializers no node reads: an onnx-ir pass the graph edits of quantize share.

After a rewrite points its nodes at new values (int8 codes, a coded embedding table),
the float tensors they read before would still be stored in the file.
"""

from __future__ import annotations

import onnx_ir as ir


class DropUnusedInitializers(ir.passes.InPlacePass):
    """Delete every initializer that no node reads and that is not a graph output."""

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        initializers = model.graph.initializers
        unused = [n for n, v in initializers.items() if not v.uses() and not v.is_graph_output()]
        for name in unused:
            del initializers[name]
        return ir.passes.PassResult(model, bool(unused))
