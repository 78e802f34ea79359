"""Torch -> ONNX through the PyTorch (dynamo) exporter, with checks (metadata: ``artifacts.metadata``).

The torch module given here is already in deploy form (``cr_edge.export.emit``):
the exporter only has to trace Gemm/Conv and the Mul/Add of the Horner chains.
The result is checked (full checker, strict shape inference, no Pow) before it
is written, atomically, as one self-contained file.
"""

from __future__ import annotations

from pathlib import Path

import onnx
import torch
from torch import nn

from cr_edge.artifacts import atomic
from cr_edge.errors import ExportError
from cr_edge.export import cleanup
from cr_edge.quiet import quiet

DEFAULT_OPSET = 17  # loads in ONNX Runtime 1.14+ and its mobile packages
MIN_OPSET, MAX_OPSET = 17, 21
# The oldest IR version each opset needs, so older runtimes on phones accept the file.
_IR_FOR_OPSET = {17: 8, 18: 8, 19: 9, 20: 9, 21: 10}


def to_onnx(
    module: nn.Module,
    examples: tuple[torch.Tensor, ...],
    input_names: list[str],
    output_names: list[str],
    opset: int = DEFAULT_OPSET,
    batch: int | None = None,
) -> onnx.ModelProto:
    """Trace ``module`` into an ONNX model; ``batch=None`` keeps the first axis dynamic."""
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise ExportError(f"--opset {opset}: cr-edge exports opsets {MIN_OPSET}..{MAX_OPSET}")
    module = module.eval()
    dynamic = None
    if batch is None:
        dim = torch.export.Dim("batch", min=1)
        dynamic = tuple({0: dim} for _ in examples)
    try:
        with quiet("torch.onnx", "onnxscript"):
            program = torch.onnx.export(
                module,
                examples,
                dynamo=True,
                opset_version=opset,
                dynamic_shapes=dynamic,
                input_names=input_names,
                output_names=output_names,
                optimize=True,
                verbose=False,
            )
    except Exception as e:  # the exporter raises many types; all mean the same to the user
        raise ExportError(
            f"the PyTorch exporter failed at opset {opset}: {str(e).splitlines()[0]}"
        ) from e
    model = cleanup.clean(program.model_proto)
    model.ir_version = _IR_FOR_OPSET[opset]
    return model


def check(model: onnx.ModelProto, where: str) -> None:
    """Full checker, strict shape inference, and the Horner promise: no Pow."""
    pows = [n.name or n.op_type for n in model.graph.node if n.op_type == "Pow"]
    if pows:
        raise ExportError(f"{where}: node {pows[0]!r} is a Pow; polynomials must lower to Mul/Add")
    try:
        onnx.checker.check_model(model, full_check=True)
        onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        raise ExportError(f"{where}: exported graph fails the ONNX checker: {e}") from e


def save(model: onnx.ModelProto, path: Path) -> None:
    """One self-contained file, written atomically."""
    atomic.write_bytes(path, model.SerializeToString())


def op_counts(model: onnx.ModelProto) -> dict[str, int]:
    counts: dict[str, int] = {}
    for node in model.graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts
