"""Reading a float model before quantization: refusals and the Horner chain.

The chain is found from the graph, not trusted from metadata: every node that is
neither a linear layer nor a shape op is the activation between linear layers (in a
cr-edge export, the domain guard's Min/Max and the Horner Mul/Adds). The metadata
``cr_edge.horner_nodes`` only decides whether to call it a *Horner* chain.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto

from cr_edge.artifacts import metadata as schema
from cr_edge.errors import InputError
from cr_edge.ops import LINEAR, QUANTIZE, QUANTIZED_LINEAR, SHAPE
from cr_edge.runtimes.safe_load import check_artifact

QUANT_OPS = QUANTIZE | QUANTIZED_LINEAR  # a model holding any of these is already quantized
INT8_TYPES = (TensorProto.INT8, TensorProto.UINT8, TensorProto.INT16, TensorProto.UINT16)


@dataclass(frozen=True)
class Guard:
    """A domain guard with constant bounds: ``Clip(a, lo, hi)`` or ``Min(Max(a, lo), hi)``."""

    node: str  # the Clip, or the pair's Max (the node that reads ``a``)
    input: str  # ``a``
    output: str  # the guarded tensor
    lo: np.ndarray
    hi: np.ndarray


def guards(model: onnx.ModelProto, consts: dict[str, np.ndarray]) -> list[Guard]:
    """Every guard of ``model`` whose bounds are among ``consts``, in graph order."""
    lower = {}  # Max(a, lo) output -> (node, a, lo): a guard's lower half, awaiting its Min
    found = []
    for node in model.graph.node:
        ins = list(node.input)
        if node.op_type == "Clip" and len(ins) == 3 and ins[1] in consts and ins[2] in consts:
            found.append(Guard(node.name, ins[0], node.output[0], consts[ins[1]], consts[ins[2]]))
        elif node.op_type == "Max" and len(ins) == 2 and ins[1] in consts:
            lower[node.output[0]] = (node.name, ins[0], consts[ins[1]])
        elif node.op_type == "Min" and len(ins) == 2 and ins[0] in lower and ins[1] in consts:
            name, a, lo = lower.pop(ins[0])
            found.append(Guard(name, a, node.output[0], lo, consts[ins[1]]))
    return found


@dataclass(frozen=True)
class Chain:
    """The activation nodes between linear layers, and whether they are a Horner chain."""

    nodes: tuple[str, ...]
    horner: bool
    note: str


def load_float_model(path: Path) -> onnx.ModelProto:
    """The model at ``path``, refused with one line if it is already quantized or not float32."""
    model = check_artifact(Path(path)).model
    if model is None:
        raise InputError(f"{path}: quantize takes an .onnx model (got {Path(path).suffix})")
    graph = model.graph
    quant = [n.name or n.op_type for n in graph.node if n.op_type in QUANT_OPS]
    if quant:
        raise InputError(
            f"{path}: already quantized (node {quant[0]!r}); quantize the fp32 export instead"
        )
    low = [t.name for t in graph.initializer if t.data_type in (*INT8_TYPES, TensorProto.FLOAT16)]
    if low:
        raise InputError(
            f"{path}: initializer {low[0]!r} is already 8/16-bit; quantize the fp32 export instead"
        )
    ids = {n.input[1] for n in graph.node if n.op_type == "Gather" and len(n.input) > 1}
    for value in graph.input:
        elem = value.type.tensor_type.elem_type
        if elem == TensorProto.INT64 and value.name in ids:
            continue  # a text model's token ids: its embedding table is what quantizes
        if elem != TensorProto.FLOAT:
            raise InputError(f"{path}: input {value.name!r} is not float32; nothing to quantize")
    return model


def horner_chain(model: onnx.ModelProto) -> Chain:
    """The nodes the ``poly`` policy governs; ``note`` says what was found, for the report."""
    nodes = tuple(n.name for n in model.graph.node if n.op_type not in (*LINEAR, *SHAPE))
    meta = {p.key: p.value for p in model.metadata_props}
    try:
        counts = schema.read(meta).horner_nodes or []
    except InputError:
        counts = []  # the chain is found from the graph; the record only says how long
    if isinstance(counts, list) and sum(c for c in counts if isinstance(c, int)) > 0:
        return Chain(nodes, True, f"Horner chain: {len(nodes)} nodes ({sum(counts)} Mul/Add)")
    return Chain(
        nodes,
        False,
        "no Horner chain found (no polynomial activation in this model); "
        f"--chain-precision governs its {len(nodes)} activation nodes",
    )


def metadata(model: onnx.ModelProto) -> dict[str, str]:
    return {p.key: p.value for p in model.metadata_props}
