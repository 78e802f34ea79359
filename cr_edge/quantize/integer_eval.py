"""A quantized graph evaluated off onnxruntime: in exact integer maths, or as AVX2 computes it.

onnxruntime picks its integer kernels by the CPU it runs on, so its verdict on one
machine says nothing about another. onnx's reference evaluator computes every
integer op exactly (int32 accumulators, float after dequantization), which is the
graph's own meaning; with ``avx2=True`` the integer matrix products are replaced by
``kernels.integer_matmul``, the saturating u8 x s8 pair sum of x86 without VNNI. The
ops replaced are the ones MLAS runs on that kernel: ``MatMulInteger``,
``QLinearMatMul``, ``ConvInteger`` (``kernels.integer_conv``: the same product over
im2col columns), and a QDQ ``DequantizeLinear -> MatMul/Gemm/Conv`` with 8-bit codes on
both sides (onnxruntime fuses it into ``QLinearMatMul``/``MatMulIntegerToFloat``/
``QGemm``/``QLinearConv``). 16-bit activations have no integer kernel (onnxruntime
computes them in float) and are left to the reference evaluator. A ``QLinearConv``
written as such (cr-edge's policies write QDQ) is not emulated: ``cr_edge.quantize``
refuses the AVX2 verdict for it (``emulated_ops``).

onnxruntime's contrib ops that cr-edge's policies write are evaluated here too:
``MatMulNBits`` (``nbits_matmul``: at accuracy level 4 the activations are quantized per
block exactly as MLAS's ``QuantizeARow_CompInt8`` does, then multiplied in exact integers)
and ``GatherBlockQuantized`` (the gathered rows dequantized exactly). MLAS's AVX2 kernel
for ``MatMulNBits`` cannot saturate (``nbits_isa``: one 8-bit product per int16 lane), so
the exact way is what AVX2 computes; ``float_nbits=True`` computes every ``MatMulNBits``
in float whatever its level, as ARM64 cores without dotprod do.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
from onnx.reference import ReferenceEvaluator
from onnx.reference.op_run import OpRun
from onnx.reference.ops.op_average_pool import AveragePool_19

from cr_edge.quantize.kernels import integer_conv, integer_matmul
from cr_edge.runtimes.runtime import Session, TensorSpec

DOMAIN = "cr_edge.avx2"
EIGHT_BIT = (ir.DataType.UINT8, ir.DataType.INT8)
INTEGER_CONV = ("ConvInteger", "QLinearConv")
NOT_EMULATED = ("QLinearConv",)
CONV_ATTRIBUTES = ("strides", "dilations", "pads", "group")
QDQ_OPSET = 21  # the reference evaluator's Q/DQ with int16 codes


class _Counted(OpRun):
    """An emulated op that counts the pair sums it saturated over every run."""

    def _count(self, n: int) -> None:
        self.saturated = getattr(self, "saturated", 0) + n


def _matmul_nd(a, a_zero, b, b_zero):
    """``integer_matmul`` over the leading axes of ``a`` (MatMul broadcasting, 2-D ``b``)."""
    lead = a.shape[:-1]
    out, sat = integer_matmul(a.reshape(-1, a.shape[-1]), a_zero, b, b_zero)
    return out.reshape(*lead, b.shape[-1]), sat


class MatMulInteger(_Counted):
    op_domain = ""

    def _run(self, A, B, a_zero_point=None, b_zero_point=None):
        out, sat = _matmul_nd(A, _zero(a_zero_point), B, _zero(b_zero_point))
        self._count(sat)
        return (out.astype(np.int32),)


class QLinearMatMul(_Counted):
    op_domain = ""

    def _run(self, a, a_scale, a_zero, b, b_scale, b_zero, y_scale, y_zero):
        acc, sat = _matmul_nd(a, a_zero, b, b_zero)
        self._count(sat)
        real = acc * (a_scale.astype(np.float64) * b_scale.astype(np.float64)) / y_scale
        info = np.iinfo(y_zero.dtype)
        return (np.clip(np.rint(real) + y_zero, info.min, info.max).astype(y_zero.dtype),)


class QdqMatMul(_Counted):
    """``DequantizeLinear`` of both operands then MatMul/Gemm: the kernel onnxruntime fuses.

    ``b`` arrives as (K, M) codes with per-column (or one) scale and zero point; the
    optional ``c`` is the float bias a Gemm adds.
    """

    op_domain = DOMAIN

    def _run(self, a, a_scale, a_zero, b, b_scale, b_zero, c=None, trans_b=None):
        if trans_b if trans_b is not None else self.trans_b:
            b = b.T
        acc, sat = _matmul_nd(a, a_zero, b, b_zero.reshape(-1))
        self._count(sat)
        out = (acc * (a_scale.astype(np.float64) * b_scale.reshape(-1))).astype(np.float32)
        return (out if c is None else out + c,)


class ConvInteger(_Counted):
    op_domain = ""

    def _run(self, x, w, x_zero_point=None, w_zero_point=None, **conv):
        attrs = _conv_attributes(self, conv)
        out, sat = integer_conv(x, _zero(x_zero_point), w, _zero(w_zero_point), attrs)
        self._count(sat)
        return (out.astype(np.int32),)


class QdqConv(_Counted):
    """``DequantizeLinear`` of input and weight then Conv: onnxruntime's ``QLinearConv``.

    The weight's scale and zero point are one or one per output channel; ``bias`` is float.
    """

    op_domain = DOMAIN

    def _run(self, x, x_scale, x_zero, w, w_scale, w_zero, bias=None, **conv):
        attrs = _conv_attributes(self, conv)
        acc, sat = integer_conv(x, x_zero, w, w_zero, attrs)
        self._count(sat)
        per_channel = np.broadcast_to(w_scale.astype(np.float64).reshape(-1), (w.shape[0],))
        shape = (1, -1) + (1,) * (acc.ndim - 2)
        out = acc * (float(x_scale) * per_channel).reshape(shape)
        if bias is not None:
            out = out + bias.reshape(shape)
        return (out.astype(np.float32),)


MS_DOMAIN = "com.microsoft"


def nbits_weight(b, scales, zero_points, k: int, n: int, bits: int, block: int):
    """The codes of a ``MatMulNBits`` weight as (K, N) int64 with their zero points and
    per-block scales: ``codes`` (K, N), ``zero`` (blocks, N), ``scale`` (blocks, N).

    ``b`` is (N, blocks, blob) uint8, ``bits``-bit codes packed low-order first;
    without ``zero_points`` the zero point is ``2**(bits-1)`` (symmetric codes).
    """
    blocks = -(-k // block)
    raw = np.asarray(b, dtype=np.uint8).reshape(n, blocks, -1)
    per_byte = 8 // bits
    shifts = (np.arange(per_byte) * bits).astype(np.uint8)
    codes = (raw[..., None] >> shifts) & np.uint8(2**bits - 1)
    codes = codes.reshape(n, blocks * block)[:, :k].T.astype(np.int64)
    scale = np.asarray(scales, dtype=np.float32).reshape(n, blocks).T
    if zero_points is None or np.size(zero_points) == 0:
        zero = np.full((blocks, n), 2 ** (bits - 1), dtype=np.int64)
    elif np.asarray(zero_points).dtype == np.uint8:
        zp = np.asarray(zero_points, dtype=np.uint8).reshape(n, -1)
        zp = ((zp[..., None] >> shifts) & np.uint8(2**bits - 1)).reshape(n, -1)[:, :blocks]
        zero = zp.T.astype(np.int64)
    else:  # float zero points: not written by cr-edge's policies
        raise ValueError("MatMulNBits with float zero points is not evaluated")
    return codes, zero, scale


def quantize_activation_blocks(a: np.ndarray, block: int) -> tuple[np.ndarray, np.ndarray]:
    """MLAS's ``QuantizeARow_CompInt8`` (accuracy level 4): each row of ``a`` (M, K) cut into
    blocks of ``block`` along K (the last zero-padded), each block to int8 with the scale
    ``max|a| / 127`` in float32 and codes ``round_half_even(a * (127 / max|a|))``.

    Returns codes (M, blocks * block) int64 and scales (M, blocks) float32.
    """
    m, k = a.shape
    blocks = -(-k // block)
    padded = np.pad(a.astype(np.float32), ((0, 0), (0, blocks * block - k)))
    padded = padded.reshape(m, blocks, block)
    top = np.abs(padded).max(axis=2)
    scale = (top / np.float32(127)).astype(np.float32)
    inverse = np.where(top != 0, np.float32(127) / np.where(top != 0, top, 1), 0).astype(np.float32)
    q = np.rint((padded * inverse[..., None]).astype(np.float32))
    return np.clip(q, -127, 127).astype(np.int64).reshape(m, -1), scale


def nbits_matmul(a, codes, zero, scale, block: int, level: int):
    """``a`` (M, K) times the ``MatMulNBits`` weight.

    Level 0: float with the dequantized weight (exact, float64 then float32). Level 4:
    activations quantized per block as MLAS does, then per block the exact integer dot
    ``sum qa * (code - zero)`` scaled by ``scale_a * scale_b`` (as VNNI's ``vpdpbusd``,
    AVX2's masked ``vpmaddubsw`` and ARM's ``udot``/``usdot`` compute it: ``nbits_isa``).
    """
    k, n = codes.shape
    blocks = scale.shape[0]
    if level != 4:
        w = (codes - np.repeat(zero, block, axis=0)[:k]) * np.repeat(scale, block, axis=0)[:k]
        return (a.astype(np.float64) @ w.astype(np.float32).astype(np.float64)).astype(np.float32)
    qa, sa = quantize_activation_blocks(a, block)
    cb = np.pad(codes, ((0, blocks * block - k), (0, 0)))
    out = np.zeros((a.shape[0], n), dtype=np.float64)
    for j in range(blocks):
        qa_j = qa[:, j * block : (j + 1) * block]
        dot = qa_j @ (cb[j * block : (j + 1) * block] - zero[j][None, :])
        out += dot * (sa[:, j : j + 1].astype(np.float64) * scale[j][None, :].astype(np.float64))
    return out.astype(np.float32)


class MatMulNBits(OpRun):
    """onnxruntime's ``com.microsoft.MatMulNBits``, exactly (``nbits_matmul``)."""

    op_domain = MS_DOMAIN

    def _run(self, A, B, scales, zero_points=None, g_idx=None, bias=None, **attrs):
        get = lambda name, default: attrs.get(name, getattr(self, name, default))  # noqa: E731
        if g_idx is not None and np.size(g_idx):
            raise ValueError("MatMulNBits with g_idx is not evaluated")
        k, n = int(get("K", 0)), int(get("N", 0))
        bits, block = int(get("bits", 4)), int(get("block_size", 0))
        level = int(get("accuracy_level", 0) or 0)
        codes, zero, scale = nbits_weight(B, scales, zero_points, k, n, bits, block)
        out = nbits_matmul(A.reshape(-1, k), codes, zero, scale, block, level)
        out = out.reshape(*A.shape[:-1], n)
        return (out if bias is None else (out + bias).astype(np.float32),)


class GatherBlockQuantized(OpRun):
    """``com.microsoft.GatherBlockQuantized`` on uint8 codes gathered along axis 0, blocks
    along the last axis (what ``quantize.embedding`` writes): exact dequantization."""

    op_domain = MS_DOMAIN

    def _run(self, data, indices, scales, zero_points=None, **attrs):
        get = lambda name, default: attrs.get(name, getattr(self, name, default))  # noqa: E731
        bits, block = int(get("bits", 4)), int(get("block_size", 128))
        if int(get("gather_axis", 0)) != 0 or int(get("quantize_axis", 1)) not in (1, -1):
            raise ValueError("GatherBlockQuantized: only gather_axis 0, quantize_axis 1")
        data = np.asarray(data)
        if data.dtype != np.uint8:
            raise ValueError(f"GatherBlockQuantized on {data.dtype} codes is not evaluated")
        rows = data[np.asarray(indices, dtype=np.int64)]
        flat = rows.reshape(-1, rows.shape[-1])
        if bits < 8:
            shifts = (np.arange(8 // bits) * bits).astype(np.uint8)
            flat = ((flat[..., None] >> shifts) & np.uint8(2**bits - 1)).reshape(flat.shape[0], -1)
        dim = np.asarray(scales).shape[-1] * block
        dim = min(dim, flat.shape[1])
        if zero_points is None:
            zero = np.float32(2 ** (bits - 1))
        else:
            raise ValueError("GatherBlockQuantized with zero points is not evaluated")
        s = np.asarray(scales, dtype=np.float32)[np.asarray(indices, dtype=np.int64)]
        s = np.repeat(s.reshape(flat.shape[0], -1), block, axis=1)[:, :dim]
        out = (flat[:, :dim].astype(np.float32) - zero) * s
        return (out.reshape(*rows.shape[:-1], dim).astype(np.float32),)


class AveragePool(AveragePool_19):
    """onnx's AveragePool, with the unpadded case as one vectorised window mean.

    The reference loops over every window in Python: on a conv net it was half the time
    of judging a candidate (batch-1 runs call it once per sample). Padding, ceil mode and
    dilations keep the reference's own implementation.
    """

    op_domain = ""

    def _run(self, x, auto_pad=None, ceil_mode=None, dilations=None, kernel_shape=None,
             pads=None, strides=None, count_include_pad=None):  # fmt: skip
        plain = (
            auto_pad in (None, "NOTSET", b"NOTSET")
            and not ceil_mode
            and not any(pads or ())
            and all(d == 1 for d in dilations or ())
        )
        if not plain:
            return super()._run(
                x, auto_pad, ceil_mode, dilations, kernel_shape, pads, strides, count_include_pad
            )
        nd = len(kernel_shape)
        axes = tuple(range(x.ndim - nd, x.ndim))
        windows = np.lib.stride_tricks.sliding_window_view(x, kernel_shape, axis=axes)
        step = strides or [1] * nd
        windows = windows[(Ellipsis, *[slice(None, None, s) for s in step], *[slice(None)] * nd)]
        mean = windows.mean(axis=tuple(range(-nd, 0)), dtype=np.float64)
        return (mean.astype(x.dtype),)


def _conv_attributes(op: OpRun, given: dict) -> dict:
    """The conv attributes of ``op`` (explicit arguments first); auto_pad must be NOTSET."""
    auto_pad = given.get("auto_pad", getattr(op, "auto_pad", "NOTSET"))
    if auto_pad not in (None, "NOTSET", b"NOTSET"):
        raise ValueError(f"auto_pad={auto_pad!r} is not emulated; pads must be explicit")
    return {k: given.get(k, getattr(op, k, None)) for k in CONV_ATTRIBUTES}


def _zero(z):
    return 0 if z is None else z


def _dequantized_codes(value: ir.Value | None) -> ir.Node | None:
    """The ``DequantizeLinear`` producing ``value`` from 8-bit codes, else None."""
    node = value.producer() if value is not None else None
    if node is None or node.op_type != "DequantizeLinear" or node.domain not in ("", "ai.onnx"):
        return None
    # the zero point's type is the codes' type (the codes of an activation carry none
    # until shape inference); without a zero point the codes are uint8 or say otherwise
    zero = node.inputs[2] if len(node.inputs) > 2 else None
    codes = zero if zero is not None else node.inputs[0]
    dtype = codes.dtype if codes is not None else None
    return node if dtype in EIGHT_BIT or (zero is None and dtype is None) else None


class EmulateQdqKernels(ir.passes.InPlacePass):
    """Replace each QDQ MatMul/Gemm that onnxruntime runs on integer kernels by ``QdqMatMul``."""

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        modified = False
        for node in list(model.graph):
            reason = self.refusal(node)
            if reason is not None:
                continue
            a, b = (_dequantized_codes(v) for v in node.inputs[:2])
            attrs = {k: v.value for k, v in node.attributes.items()}
            zeros = [
                dq.inputs[2] if len(dq.inputs) > 2 and dq.inputs[2] is not None else None
                for dq in (a, b)
            ]
            inputs = [
                a.inputs[0],
                a.inputs[1],
                zeros[0],
                b.inputs[0],
                b.inputs[1],
                zeros[1],
                *node.inputs[2:3],
            ]
            if node.op_type == "Conv":
                op, kept = "QdqConv", [v for k, v in node.attributes.items() if k != "kernel_shape"]
            else:
                trans_b = int(attrs.get("transB", 0)) if node.op_type == "Gemm" else 0
                op, kept = "QdqMatMul", [ir.AttrInt64("trans_b", trans_b)]
            fused = ir.Node(
                DOMAIN,
                op,
                inputs,
                attributes={attr.name: attr for attr in kept},
                name=f"{node.name}__avx2",
            )
            model.graph.insert_before(node, fused)
            node.outputs[0].replace_all_uses_with(fused.outputs[0], replace_graph_outputs=True)
            model.graph.remove(node, safe=True)
            modified = True
        if modified:
            model.opset_imports[DOMAIN] = 1
        return ir.passes.PassResult(model, modified)

    @staticmethod
    def refusal(node: ir.Node) -> str | None:
        """Why ``node`` is not an integer-kernel product (None: it is one)."""
        if node.op_type not in ("MatMul", "Gemm", "Conv") or node.domain not in ("", "ai.onnx"):
            return "not a MatMul, Gemm or Conv"
        attrs = {k: v.value for k, v in node.attributes.items()}
        if attrs.get("auto_pad", "NOTSET") not in ("NOTSET", b"NOTSET"):
            return "Conv with auto_pad: only explicit pads are emulated"
        if (
            attrs.get("transA", 0)
            or attrs.get("alpha", 1.0) != 1.0
            or attrs.get("beta", 1.0) != 1.0
        ):
            return "Gemm with transA, alpha or beta: onnxruntime keeps it in float"
        a, b = (_dequantized_codes(v) for v in node.inputs[:2])
        if a is None or b is None:
            return "an operand is not dequantized from 8-bit codes (float or 16-bit kernel)"
        if b.inputs[0].const_value is None:
            return "the weight codes are not constant"
        if len(node.outputs[0].uses()) == 0 and not node.outputs[0].is_graph_output():
            return "output unused"
        return None


class ReferenceSession(Session):
    """A model run by onnx's reference evaluator (``avx2``: with the u8s8 kernel emulated;
    ``float_nbits``: ``MatMulNBits`` in float, as on a CPU without an int8 kernel for it).

    ``saturated`` is the number of int16 pair sums that saturated since loading.
    """

    def __init__(
        self, model: onnx.ModelProto, avx2: bool = False, float_nbits: bool = False
    ) -> None:
        irm = ir.from_proto(model)
        irm.graph.sort()  # the fp16 converter appends its input Casts; the evaluator runs in order
        _standard_qdq(irm)
        if float_nbits:  # no int8 kernel (ARMv8.0): MLAS computes every level in float
            for node in irm.graph:
                if node.op_type == "MatMulNBits" and node.domain == MS_DOMAIN:
                    node.attributes["accuracy_level"] = ir.AttrInt64("accuracy_level", 0)
        if avx2:
            EmulateQdqKernels()(irm)
        model = ir.to_proto(irm)
        self.emulates = avx2
        ops = [MatMulInteger, QLinearMatMul, ConvInteger, QdqMatMul, QdqConv] if avx2 else []
        self._eval = ReferenceEvaluator(
            model, new_ops=[AveragePool, MatMulNBits, GatherBlockQuantized, *ops]
        )
        self.inputs = [_spec(v) for v in model.graph.input]
        self.outputs = [_spec(v) for v in model.graph.output]
        self.metadata = {p.key: p.value for p in model.metadata_props}

    @property
    def saturated(self) -> int:
        return sum(getattr(node, "saturated", 0) for node in self._eval.rt_nodes_)

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        # a broken candidate overflows to Inf: parity reports it, numpy need not warn
        with np.errstate(over="ignore", invalid="ignore"):
            return [np.asarray(o) for o in self._eval.run(None, feeds)]


def _standard_qdq(model: ir.Model) -> None:
    """onnxruntime writes 16-bit Q/DQ in its own domain below opset 21; the reference
    evaluator knows them as the standard ops of opset 21 (same semantics), so use those."""
    for node in model.graph:
        if node.domain == "com.microsoft" and node.op_type in (
            "QuantizeLinear",
            "DequantizeLinear",
        ):
            node.domain = ""
    model.opset_imports[""] = max(model.opset_imports.get("", 1), QDQ_OPSET)


def emulated_ops(model: onnx.ModelProto) -> str | None:
    """Why the AVX2 emulation cannot judge ``model`` (a ``QLinearConv``), else None."""
    conv = [n.name or n.op_type for n in model.graph.node if n.op_type in NOT_EMULATED]
    if conv:
        return f"integer convolution {conv[0]!r} is not emulated"
    return None


def integer_kernel_nodes(model: onnx.ModelProto) -> int:
    """How many nodes onnxruntime would run on an 8-bit integer matrix kernel."""
    irm = ir.from_proto(model)
    direct = sum(n.op_type in ("MatMulInteger", "QLinearMatMul", *INTEGER_CONV) for n in irm.graph)
    qdq = sum(EmulateQdqKernels.refusal(n) is None for n in irm.graph)
    return direct + qdq


def _spec(value: onnx.ValueInfoProto) -> TensorSpec:
    dims = tuple(d.dim_value or d.dim_param or None for d in value.type.tensor_type.shape.dim)
    elem = value.type.tensor_type.elem_type
    dtype = np.int64 if elem == onnx.TensorProto.INT64 else np.float32  # text: token ids
    return TensorSpec(value.name, dims, np.dtype(dtype))
