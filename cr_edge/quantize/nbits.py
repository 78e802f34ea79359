"""``nb8``/``nb4``: onnxruntime's ``MatMulNBits``, weights in blocks along K, each its own scale.

onnxruntime's ``MatMulNBitsQuantizer`` writes the nodes (no hand-written quantizer):
symmetric codes (the default zero point ``2**(bits-1)``, so no zero-point tensor),
one float scale per block of ``block`` input channels of each output column. Its
kernel reads the codes directly: at ``accuracy_level`` 4 MLAS quantizes each block of
the activations to int8 at run time and multiplies integers (the fast path), at 0 it
computes in float with the dequantized weights.

Gemm is lowered to MatMul + Add first (``gemm_to_matmul``): the quantizer knows MatMul
only. The block size, unless the policy fixes it, is chosen from the calibration
error (``choose_block``), by the rule ``weight_only`` uses for its scale axis: start
from the block that stores the fewest bytes (a block longer than a layer's K pads its
codes) and take a finer one, with more scales, only while it at least divides the error
it puts into the layers' outputs by ``FINER_BLOCK_GAIN``. Blocks run along K, so an input channel far larger
than its neighbours (export folds ``1/std`` of the input normalisation into the first
layer) would set the scale of its whole block: the weights are equalized first
(``quantize.equalize``, as for the integer policies), which measured 0.02 output error
against 0.54 without it on digits-cr@512x512. The choice reads only the weights and the primal path's layer
inputs, which the model and its derivative companion share, so both pick the same
block and hence the same codes; the companion's derivative-only MatMuls then read
those very codes (``companion.tie_nbits_``).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

from cr_edge.errors import ExportError
from cr_edge.quantize.companion import derivative_only, tie_nbits_
from cr_edge.quantize.gemm_to_matmul import gemm_to_matmul
from cr_edge.quantize.measure import probe
from cr_edge.quantize.policy import BLOCKS, NBITS, QuantPolicy
from cr_edge.quiet import quiet

FINER_BLOCK_GAIN = 2.0  # a block with more scales must cut the output error this much


def layers(model: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    """Primal-path MatMuls with a constant 2-D weight: weight name -> the node reading it."""
    inits = {t.name: t for t in model.graph.initializer}
    derivative = derivative_only(model)
    found: dict[str, onnx.NodeProto] = {}
    for node in model.graph.node:
        if node.op_type != "MatMul" or node.name in derivative or len(node.input) < 2:
            continue
        w = inits.get(node.input[1])
        if w is not None and len(w.dims) == 2 and w.data_type == onnx.TensorProto.FLOAT:
            found.setdefault(node.input[1], node)
    return found


def block_codes(w: np.ndarray, bits: int, block: int) -> np.ndarray:
    """``w`` (K, N) rounded as a symmetric ``bits``-bit block quantizer does (dequantized).

    The error model of ``choose_block`` only: the codes written are onnxruntime's.
    """
    k = w.shape[0]
    pad = -k % block
    wp = np.pad(w.astype(np.float64), ((0, pad), (0, 0))).reshape(-1, block, w.shape[1])
    top = np.abs(wp).max(axis=1, keepdims=True)
    levels = 2 ** (bits - 1) - 1
    scale = np.where(top > 0, top / levels, 1.0)
    q = np.clip(np.rint(wp / scale), -levels - 1, levels) * scale
    return q.reshape(-1, w.shape[1])[:k]


def output_errors(
    weights: dict[str, np.ndarray], rms: dict[str, np.ndarray], bits: int
) -> dict[int, float]:
    """Per block size, the largest relative output error ``||dW^T diag(rms)|| / ||W^T diag(rms)||``
    over the layers (``rms``: each input channel's RMS on the calibration data)."""
    errors = {}
    for block in BLOCKS:
        worst = 0.0
        for name, w in weights.items():
            r = rms.get(name, np.ones(w.shape[0]))[:, None]
            err = np.linalg.norm((block_codes(w, bits, block) - w) * r)
            worst = max(worst, float(err / max(np.linalg.norm(w * r), 1e-30)))
        errors[block] = worst
    return errors


def nbits_bytes(shapes: list[tuple[int, int]], bits: int, block: int) -> int:
    """Bytes of codes and float scales for weights of ``shapes`` (K, N) in ``block``s."""
    return sum(n * -(-k // block) * (block * bits // 8 + 4) for k, n in shapes)


def choose_block(errors: dict[int, float], size: dict[int, int]) -> int:
    """From the block storing the fewest bytes (``size``; the larger block on a tie), each
    costlier one in turn replaces it only if it cuts the error by ``FINER_BLOCK_GAIN``."""
    order = sorted(errors, key=lambda b: (size[b], -b))
    chosen = order[0]
    for block in order[1:]:
        if errors[block] * FINER_BLOCK_GAIN <= errors[chosen]:
            chosen = block
    return chosen


def _input_rms(model: onnx.ModelProto, found: dict[str, onnx.NodeProto], feeds: dict) -> dict:
    if not feeds:
        return {}
    values = probe(model, sorted({n.input[0] for n in found.values()}), feeds)
    out = {}
    for name, node in found.items():
        a = values[node.input[0]].astype(np.float64)
        out[name] = np.sqrt(np.square(a.reshape(-1, a.shape[-1])).mean(axis=0))
    return out


def block_for(model: onnx.ModelProto, policy: QuantPolicy, feeds: dict) -> int:
    """The policy's block, or the one ``choose_block`` picks for ``model`` (already lowered)."""
    if policy.block:
        return policy.block
    found = layers(model)
    if not found:
        return max(BLOCKS)
    inits = {t.name: t for t in model.graph.initializer}
    weights = {n: onnx.numpy_helper.to_array(inits[n]) for n in found}
    bits = NBITS[policy.mode]
    shapes = [w.shape for w in weights.values()]
    size = {b: nbits_bytes(shapes, bits, b) for b in BLOCKS}
    return choose_block(output_errors(weights, _input_rms(model, found, feeds), bits), size)


def quantize_nbits(model: onnx.ModelProto, policy: QuantPolicy, feeds: dict) -> onnx.ModelProto:
    """``model`` with every primal-path MatMul weight as ``MatMulNBits`` codes, the companion's
    derivative-only MatMuls tied to the same codes; the block chosen by ``block_for``."""
    lowered = gemm_to_matmul(model)
    block = block_for(lowered, policy, feeds)
    primal = set(n.name for n in layers(lowered).values())
    exclude = [n.name for n in lowered.graph.node if n.op_type == "MatMul" and n.name not in primal]
    try:
        with quiet(""):
            quantizer = MatMulNBitsQuantizer(
                lowered,
                bits=NBITS[policy.mode],
                block_size=block,
                is_symmetric=True,
                accuracy_level=policy.accuracy_level,
                nodes_to_exclude=exclude,
                op_types_to_quantize=("MatMul",),
            )
            quantizer.process()
    except (ValueError, RuntimeError, KeyError, AssertionError) as e:
        raise ExportError(f"onnxruntime's MatMulNBitsQuantizer refused {policy.label}: {e}") from e
    out = quantizer.model.model
    tie_nbits_(out, set(exclude))
    return out
