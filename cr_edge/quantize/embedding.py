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
from onnx import helper, numpy_helper

from cr_edge.quantize.nbits import choose_block
from cr_edge.quantize.policy import BLOCKS

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


def embedding_gathers(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """The Gathers of a constant 2-D float table along axis 0 (a text model's embedding)."""
    inits = {t.name: t for t in model.graph.initializer}
    found = []
    for node in model.graph.node:
        if node.op_type != "Gather" or node.domain not in ("", "ai.onnx"):
            continue
        table = inits.get(node.input[0])
        axis = next((helper.get_attribute_value(a) for a in node.attribute if a.name == "axis"), 0)
        flat = table is not None and len(table.dims) == 2 and axis == 0
        if flat and table.data_type == onnx.TensorProto.FLOAT:
            found.append(node)
    return found


def quantize_embeddings(model: onnx.ModelProto, bits: int = 8) -> onnx.ModelProto:
    """A copy of ``model`` with each embedding table as ``GatherBlockQuantized`` codes."""
    gathers = embedding_gathers(model)
    if not gathers:
        return model
    out = onnx.ModelProto()
    out.CopyFrom(model)
    inits = {t.name: t for t in out.graph.initializer}
    done: dict[str, tuple[str, str, int]] = {}
    by_name = {n.name: n for n in gathers}
    for i, node in enumerate(out.graph.node):
        if node.name not in by_name or node.input[0] not in inits:
            continue
        name = node.input[0]
        if name not in done:
            table = numpy_helper.to_array(inits[name])
            block = choose_table_block(table, bits)
            codes, scales = quantize_table(table, bits, block)
            out.graph.initializer.extend(
                [
                    numpy_helper.from_array(codes, f"{name}_q{bits}"),
                    numpy_helper.from_array(scales, f"{name}_q{bits}_scales"),
                ]
            )
            done[name] = (f"{name}_q{bits}", f"{name}_q{bits}_scales", block)
        codes_name, scales_name, block = done[name]
        quantized = helper.make_node(
            "GatherBlockQuantized",
            [codes_name, node.input[1], scales_name],
            list(node.output),
            name=f"{node.name}_q{bits}",
            domain=DOMAIN,
            bits=bits,
            block_size=block,
            gather_axis=0,
            quantize_axis=1,
        )
        out.graph.node[i].CopyFrom(quantized)
    if not any(o.domain == DOMAIN for o in out.opset_import):
        out.opset_import.append(helper.make_opsetid(DOMAIN, 1))
    used = {i for n in out.graph.node for i in n.input}
    keep = [t for t in out.graph.initializer if t.name in used]
    del out.graph.initializer[:]
    out.graph.initializer.extend(keep)
    return out
