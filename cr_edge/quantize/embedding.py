"""A text model's embedding table, block-quantized: ``Gather`` -> ``GatherBlockQuantized``.

In a cr-edge text net the table (buckets x embed_dim) is nearly all the parameters,
so no layer policy makes the file small while it stays float. Each row is cut into
blocks of ``block`` values along the embedding axis, each block with its own float
scale, and stored as symmetric ``bits``-bit codes (uint8, the default zero point
``2**(bits-1)``, 4-bit codes packed two per byte low-order first), which onnxruntime's
``com.microsoft.GatherBlockQuantized`` dequantizes for the gathered rows only. A
``DequantizeLinear`` on the table would dequantize every row on every run (and hold a
float copy of the table in memory), so it is not offered; dequantizing the gathered rows
with plain ops (Gather of codes and of row scales, Cast, Sub, Mul) computes the same
rows but was slower (yelp-full-cr shape, 1 thread, AMD EPYC, onnxruntime 1.32: 1.28x
fp32 at batch 1 and 2.66x at 64, against 1.05x and 1.20x for ``GatherBlockQuantized``).

onnxruntime's ``MatMulNBitsQuantizer`` writes ``GatherBlockQuantized`` for 4-bit tables
only; the codes here are the same symmetric round-to-nearest for 8 and 4 bits. The block
is chosen as ``quantize.nbits`` chooses its own (``choose_block``: a block with more
scales must halve the error). Codes depend on the table alone, so the
model and its derivative companion (whose ``v`` enters after the pooling) get the same.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir

from cr_edge.quantize.nbits import choose_block
from cr_edge.quantize.policy import BLOCKS
from cr_edge.quantize.unused import DropUnusedInitializers

DOMAIN = "com.microsoft"


def quantize_table(table: np.ndarray, bits: int, block: int) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric codes of ``table`` (rows, dim) in blocks along ``dim``: (uint8 codes, scales).

    Codes are ``q + 2**(bits-1)`` with ``|q| <= 2**(bits-1) - 1``; 4-bit codes come packed.
    """
    rows, dim = table.shape
    blocks = -(-dim // block)
    padded = np.pad(table.astype(np.float32), ((0, 0), (0, blocks * block - dim)))
    padded = padded.reshape(rows, blocks, block)
    levels = 2 ** (bits - 1) - 1
    top = np.abs(padded).max(axis=2)
    scales = np.where(top > 0, top / np.float32(levels), np.float32(1)).astype(np.float32)
    q = np.clip(np.rint(padded / scales[:, :, None]), -levels, levels).astype(np.int16)
    codes = (q + 2 ** (bits - 1)).reshape(rows, -1)[:, :dim].astype(np.uint8)
    if bits == 4:
        if dim % 2:
            codes = np.pad(codes, ((0, 0), (0, 1)))
        codes = (codes[:, 0::2] | (codes[:, 1::2] << 4)).astype(np.uint8)
    return codes, scales


def dequantize_table(
    codes: np.ndarray, scales: np.ndarray, bits: int, block: int, dim: int
) -> np.ndarray:
    """The float rows ``codes`` stand for (what ``GatherBlockQuantized`` returns for them)."""
    if bits == 4:
        codes = np.stack([codes & 0x0F, codes >> 4], axis=-1).reshape(codes.shape[0], -1)
    q = codes[:, :dim].astype(np.float32) - np.float32(2 ** (bits - 1))
    per = np.repeat(scales, block, axis=1)[:, :dim]
    return (q * per).astype(np.float32)


def table_error(table: np.ndarray, bits: int, block: int) -> float:
    """Relative Frobenius error of ``table`` coded with ``block``."""
    codes, scales = quantize_table(table, bits, block)
    back = dequantize_table(codes, scales, bits, block, table.shape[1])
    return float(np.linalg.norm(back - table) / max(np.linalg.norm(table), 1e-30))


def choose_table_block(table: np.ndarray, bits: int) -> int:
    """The table's block by ``nbits.choose_block``, up to one block per row."""
    dim = table.shape[1]
    row = next((b for b in BLOCKS if b >= dim), BLOCKS[-1])
    candidates = [b for b in BLOCKS if b < dim] + [row]
    errors = {b: table_error(table, bits, b) for b in candidates}
    size = {b: -(-dim // b) * 4 + dim * bits // 8 for b in candidates}  # bytes per row
    return choose_block(errors, size)


class CodeEmbeddingTables(ir.passes.InPlacePass):
    """Each ``Gather(table, ids)`` of a constant 2-D float table by rows -> ``GatherBlockQuantized``.

    A table read by several Gathers is coded once, and each of them reads the same codes
    and scales; the float table goes once nothing reads it. An onnx-ir pass, not an
    onnxscript rewrite rule: the quantizer is torch-free and installs with the core
    dependencies, and onnxscript comes only with the ``train`` extra.
    """

    def __init__(self, bits: int) -> None:
        super().__init__()
        self.bits = bits

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph, bits = model.graph, self.bits
        coded: dict[str, tuple[ir.Value, ir.Value, int]] = {}
        modified = False
        for node in list(graph):
            if self.refusal(node) is not None:
                continue
            table = node.inputs[0]
            if table.name not in coded:
                rows = table.const_value.numpy()
                block = choose_table_block(rows, bits)
                codes, scales = quantize_table(rows, bits, block)
                coded[table.name] = (
                    _initializer(graph, codes, f"{table.name}_q{bits}"),
                    _initializer(graph, scales, f"{table.name}_q{bits}_scales"),
                    block,
                )
            codes_value, scales_value, block = coded[table.name]
            attributes = {"bits": bits, "block_size": block, "gather_axis": 0, "quantize_axis": 1}
            quantized = ir.Node(
                DOMAIN,
                "GatherBlockQuantized",
                [codes_value, node.inputs[1], scales_value],
                [ir.AttrInt64(k, v) for k, v in attributes.items()],
                name=f"{node.name}_q{bits}",
            )
            ir.convenience.replace_nodes_and_values(
                graph, node, [node], [quantized], node.outputs, quantized.outputs
            )
            modified = True
        if modified:
            graph.opset_imports.setdefault(DOMAIN, 1)
            DropUnusedInitializers()(model)
        return ir.passes.PassResult(model, modified)

    @staticmethod
    def refusal(node: ir.Node) -> str | None:
        """Why ``node`` is not coded (None: it is)."""
        if node.op_type != "Gather" or node.domain not in ("", "ai.onnx"):
            return "not a Gather"
        table = node.inputs[0]
        tensor = table.const_value if table is not None and table.is_initializer() else None
        if tensor is None:
            return "its table is not a constant initializer: nothing to code"
        if len(tensor.shape) != 2 or tensor.dtype != ir.DataType.FLOAT:
            return f"{table.name!r} is not a 2-D float32 table"
        axis = node.attributes.get_int("axis", 0)
        if axis != 0:
            return f"it gathers along axis {axis}, not the table's rows"
        return None


def _initializer(graph: ir.Graph, array: np.ndarray, name: str) -> ir.Value:
    value = ir.Value(name=name, const_value=ir.tensor(array, name=name))
    graph.register_initializer(value)
    return value


def quantize_embeddings(model: onnx.ModelProto, bits: int = 8) -> onnx.ModelProto:
    """A copy of ``model`` with each embedding table as ``GatherBlockQuantized`` codes
    (``model`` itself when it has none)."""
    irm = ir.from_proto(model)
    return ir.to_proto(irm) if CodeEmbeddingTables(bits)(irm).modified else model
