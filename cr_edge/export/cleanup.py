"""Cleanup of an exported graph, as onnx-ir passes in one ordered list.

torch's exporter tags every node and value with torch-internal metadata (FX node
names, stack traces, scopes) that means nothing on a device and can outweigh a tiny
model; and a traced graph can carry nodes and initializers nothing reads. onnx-ir
has passes for most of this; the one it lacks (value metadata) is a pass of the same
shape here, so the whole cleanup is one ``PassManager`` over the IR, never edits of
the protobuf by hand. Model-level ``metadata_props`` are cr-edge's own and are kept.
"""

from __future__ import annotations

import onnx
import onnx_ir as ir
from onnx_ir.passes.common import ClearMetadataAndDocStringPass, RemoveUnusedNodesPass


class ClearValueMetadataPass(ir.passes.InPlacePass):
    """Clear ``metadata_props`` of every value: graph inputs, outputs and node outputs.

    ``ClearMetadataAndDocStringPass`` clears nodes and graphs only; the exporter tags
    values too.
    """

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        modified = False
        for value in _values(model.graph):
            if value.metadata_props:
                value.metadata_props.clear()
                modified = True
        return ir.passes.PassResult(model, modified=modified)


def _values(graph: ir.Graph):
    yield from graph.inputs
    yield from graph.initializers.values()
    for node in ir.traversal.RecursiveGraphIterator(graph):
        yield from node.outputs


# Order: metadata first (nothing depends on it), then dead nodes and the initializers
# only they read.
CLEANUP = ir.passes.PassManager(
    [ClearMetadataAndDocStringPass(), ClearValueMetadataPass(), RemoveUnusedNodesPass()]
)


def clean(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` without exporter metadata, unused nodes or unused initializers."""
    graph = ir.serde.deserialize_model(model)
    CLEANUP(graph)
    return ir.serde.serialize_model(graph)
