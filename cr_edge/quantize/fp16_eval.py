"""An fp16 graph evaluated as fp16 hardware computes it: half-precision sums, in a kernel's order.

On x86 onnxruntime runs most fp16 ops in fp32 behind Casts, and onnx's reference
evaluator accumulates an fp16 matrix product in float as well; both round once per
output. A core with fp16 arithmetic (ARMv8.2-A FP16: most phones) runs its fp16 GEMM
with fp16 accumulators, so every partial sum of a dot product is rounded to fp16 (11
significant bits), and a sum of large cancelling terms loses what fp32 keeps.

``Fp16Session(model, order)`` runs onnx's reference evaluator with MatMul, Gemm, Conv
and AveragePool replaced by half-precision kernels: each product rounded to fp16 (or,
``fused``, kept exact as an FMA does), each partial sum rounded to fp16, in the order of
``order``. Which order a phone's kernel uses is not known here (MLAS, XNNPACK and vendor
libraries block differently), so a verdict takes the worst case over ``ORDERS``:

* ``sequential``: one accumulator per output, ``k = 0, 1, ...``: a GEMM micro-kernel
  that broadcasts ``a[i, k]`` against a row of ``b`` (MLAS's and XNNPACK's f16 GEMMs
  vectorise over outputs, so each output's sum runs down ``k`` in order);
* ``pairwise``: a binary tree over ``k``, neighbours added level by level;
* ``lanes4/8/16``: ``L`` accumulators, ``k`` going to lane ``k mod L`` (a SIMD register
  of ``L`` halves: 64-, 128-bit NEON, 256-bit SVE), then a pairwise horizontal sum of
  the lanes, as ``vaddvq``/``faddp`` do;
* ``sequential fused``, ``lanes8 fused``: the same with ``FMLA``'s single rounding of
  ``acc + a * b`` (the micro-kernels above are FMA loops).

A bias (Gemm's ``C``, Conv's ``B``) is added to the finished sum and rounded once. Every
other fp16 op already rounds to fp16 in the reference evaluator (numpy computes a half
op in float32, whose 24 bits make that one correctly rounded result), and ops the graph
keeps in fp32 behind Casts stay fp32, as they would on the device.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
from onnx.reference import ReferenceEvaluator
from onnx.reference.op_run import OpRun

from cr_edge.runtimes.runtime import Session, TensorSpec

HALF = np.float16
ORDERS = (
    "sequential",
    "sequential fused",
    "pairwise",
    "lanes4",
    "lanes8",
    "lanes16",
    "lanes8 fused",
)
PRODUCT_OPS = ("MatMul", "Gemm", "Conv")
PAIRWISE_BYTES = 64 << 20  # the pairwise order holds every product of a block of rows


def is_fp16(model: onnx.ModelProto) -> bool:
    """Whether ``model`` runs a matrix product (MatMul, Gemm, Conv) on fp16 operands."""
    half = {t.name for t in model.graph.initializer if t.data_type == onnx.TensorProto.FLOAT16}
    half |= {n.output[0] for n in model.graph.node if n.op_type == "Cast" and _to_half(n)}
    return any(n.op_type in PRODUCT_OPS and n.input[0] in half for n in model.graph.node) or any(
        n.op_type in PRODUCT_OPS and len(n.input) > 1 and n.input[1] in half
        for n in model.graph.node
    )


def _to_half(node: onnx.NodeProto) -> bool:
    return any(a.name == "to" and a.i == onnx.TensorProto.FLOAT16 for a in node.attribute)


def dot16(a: np.ndarray, b: np.ndarray, order: str) -> np.ndarray:
    """``a @ b`` for ``a`` (N, K) and ``b`` (K, M) fp16, every partial sum rounded to fp16.

    Products are rounded to fp16 before they are added, except for the ``fused`` orders,
    where ``acc + a * b`` is rounded once (the product of two halves is exact in float64,
    and so is its sum with a half but for a rounding far below fp16's). The arithmetic runs
    in float32 rounded to fp16 after every operation: the same results as numpy's half
    ufuncs (float32's 24 bits make a rounded sum or product of two halves correctly
    rounded), about 30x faster.
    """
    if order not in ORDERS:
        raise ValueError(f"fp16 accumulation order {order!r}: one of {', '.join(ORDERS)}")
    a = np.asarray(a, HALF).astype(np.float32)
    b = np.asarray(b, HALF).astype(np.float32)
    n, k = a.shape
    m = b.shape[1]
    if k == 0:
        return np.zeros((n, m), HALF)
    if order == "pairwise":
        rows = max(1, PAIRWISE_BYTES // (4 * k * m))
        parts = [_pairwise(a[i : i + rows], b) for i in range(0, n, rows)]
        return np.concatenate(parts).astype(HALF)
    head = order.split()[0]
    lanes = 1 if head == "sequential" else int(head.removeprefix("lanes"))
    fused = order.endswith("fused")
    acc = np.zeros((n, lanes, m), np.float64 if fused else np.float32)
    for start in range(0, k, lanes):  # one step of every lane: k = start .. start + lanes - 1
        step = slice(start, min(start + lanes, k))
        width = step.stop - step.start
        if fused:
            exact = a[:, step, None].astype(np.float64) * b[None, step].astype(np.float64)
            acc[:, :width] = _half(acc[:, :width] + exact)
        else:
            acc[:, :width] = _half(acc[:, :width] + _half(a[:, step, None] * b[None, step]))
    return _tree(acc.astype(np.float32)).astype(HALF)


def _half(x: np.ndarray) -> np.ndarray:
    """``x`` rounded to fp16 (to nearest, ties to even; past 65504 to infinity), kept wide."""
    return x.astype(HALF).astype(x.dtype)


def _pairwise(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Every product rounded to fp16, then neighbours added level by level (``_tree``)."""
    return _tree(_half(a[:, :, None] * b[None, :, :]))


def _tree(parts: np.ndarray) -> np.ndarray:
    """``parts`` (N, L, M) summed over L as SIMD lanes are: neighbours added in pairs, each
    sum rounded to fp16, level by level (an odd last one carried up) until one is left."""
    while parts.shape[1] > 1:
        even = parts.shape[1] // 2 * 2
        pairs = _half(parts[:, 0:even:2] + parts[:, 1:even:2])
        parts = np.concatenate([pairs, parts[:, even:]], axis=1)
    return parts[:, 0]


def _columns(x: np.ndarray, kernel: tuple[int, ...], conv: dict) -> tuple[np.ndarray, tuple]:
    """im2col: ``x`` (N, C, *spatial) as (N * out, C, prod(kernel)) windows, and ``out``."""
    nd = x.ndim - 2
    strides = conv.get("strides") or [1] * nd
    dilations = conv.get("dilations") or [1] * nd
    pads = conv.get("pads") or [0] * (2 * nd)
    padded = np.pad(x, [(0, 0), (0, 0), *[(pads[i], pads[i + nd]) for i in range(nd)]])
    extent = [(k - 1) * d + 1 for k, d in zip(kernel, dilations, strict=True)]
    windows = np.lib.stride_tricks.sliding_window_view(padded, extent, axis=range(2, 2 + nd))
    picks = [slice(None, None, s) for s in strides] + [slice(None, None, d) for d in dilations]
    windows = windows[(slice(None), slice(None), *picks)]  # (N, C, *out, *kernel)
    out = windows.shape[2 : 2 + nd]
    cols = windows.transpose(0, *range(2, 2 + nd), 1, *range(2 + nd, 2 + 2 * nd))
    return cols.reshape(x.shape[0] * int(np.prod(out)), x.shape[1], -1), out


def _half_op(order: str) -> list[type[OpRun]]:
    """The reference evaluator's product ops, rounding as fp16 hardware in ``order``."""

    def matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        if a.dtype != HALF or b.dtype != HALF:  # an fp32 product the graph kept: not ours
            return np.matmul(a, b)
        if b.ndim == 1:  # (..., K) @ (K,): a column, then dropped (numpy's MatMul rule)
            return matmul(a, b[:, None])[..., 0]
        if a.ndim == 1:
            return matmul(a[None, :], b)[..., 0, :]
        if b.ndim > 2:  # batched: one product per leading index (broadcast)
            lead = np.broadcast_shapes(a.shape[:-2], b.shape[:-2])
            a = np.broadcast_to(a, (*lead, *a.shape[-2:])).reshape(-1, *a.shape[-2:])
            b = np.broadcast_to(b, (*lead, *b.shape[-2:])).reshape(-1, *b.shape[-2:])
            return np.stack([matmul(ai, bi) for ai, bi in zip(a, b, strict=True)]).reshape(
                *lead, a.shape[-2], b.shape[-1]
            )
        lead = a.shape[:-1]
        return dot16(a.reshape(-1, a.shape[-1]), b, order).reshape(*lead, b.shape[-1])

    class MatMul(OpRun):
        op_domain = ""

        def _run(self, a, b):
            return (matmul(a, b),)

    class Gemm(OpRun):
        op_domain = ""

        def _run(self, a, b, c=None, alpha=None, beta=None, transA=None, transB=None):
            a = a.T if transA else a
            b = b.T if transB else b
            y = matmul(a, b)
            if alpha not in (None, 1.0):
                y = y * y.dtype.type(alpha)
            if c is not None:
                y = y + (c if beta in (None, 1.0) else c * c.dtype.type(beta))
            return (y.astype(a.dtype, copy=False),)

    class Conv(OpRun):
        op_domain = ""

        def _run(self, x, w, b=None, auto_pad=None, dilations=None, group=None,
                 kernel_shape=None, pads=None, strides=None):  # fmt: skip
            if auto_pad not in (None, "NOTSET", b"NOTSET"):
                raise NotImplementedError(f"Conv auto_pad={auto_pad!r} in the fp16 evaluator")
            conv = {"dilations": dilations, "pads": pads, "strides": strides}
            cols, out = _columns(x, w.shape[2:], conv)
            group = int(group or 1)
            c_in, m_out = x.shape[1] // group, w.shape[0] // group
            parts = []
            for g in range(group):
                a = cols[:, g * c_in : (g + 1) * c_in].reshape(cols.shape[0], -1)
                wg = w[g * m_out : (g + 1) * m_out].reshape(m_out, -1).T
                parts.append(matmul(np.ascontiguousarray(a), np.ascontiguousarray(wg)))
            y = np.concatenate(parts, axis=1).reshape(x.shape[0], *out, w.shape[0])
            y = y.transpose(0, len(out) + 1, *range(1, len(out) + 1))
            if b is not None:
                y = y + b.reshape(1, -1, *([1] * len(out)))
            return (np.ascontiguousarray(y),)

    class AveragePool(OpRun):
        """Window sums in fp16 (the same order as the products), then one division."""

        op_domain = ""

        def _run(self, x, auto_pad=None, ceil_mode=None, count_include_pad=None,
                 dilations=None, kernel_shape=None, pads=None, strides=None):  # fmt: skip
            if auto_pad not in (None, "NOTSET", b"NOTSET") or ceil_mode or any(pads or ()):
                raise NotImplementedError("padded AveragePool in the fp16 evaluator")
            conv = {"dilations": dilations, "strides": strides}
            cols, out = _columns(x, tuple(kernel_shape), conv)  # (N * out, C, window)
            n, c, window = cols.shape
            flat = cols.reshape(n * c, window)
            ones = np.ones((window, 1), x.dtype)
            total = dot16(flat, ones, order) if x.dtype == HALF else flat @ ones
            y = (total / x.dtype.type(window)).reshape(x.shape[0], *out, c)
            return (np.ascontiguousarray(y.transpose(0, len(out) + 1, *range(1, len(out) + 1))),)

    return [MatMul, Gemm, Conv, AveragePool]


class Fp16Session(Session):
    """``model`` run by onnx's reference evaluator with fp16 products summed in ``order``."""

    def __init__(self, model: onnx.ModelProto, order: str = "sequential") -> None:
        if order not in ORDERS:
            raise ValueError(f"fp16 accumulation order {order!r}: one of {', '.join(ORDERS)}")
        irm = ir.from_proto(model)
        irm.graph.sort()  # the fp16 converter appends its input Casts; the evaluator runs in order
        model = ir.to_proto(irm)
        self.order = order
        self._eval = ReferenceEvaluator(model, new_ops=_half_op(order))
        self.inputs = [_spec(v) for v in model.graph.input]
        self.outputs = [_spec(v) for v in model.graph.output]
        self.metadata = {p.key: p.value for p in model.metadata_props}

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        # fp16 overflows to Inf as the hardware does: parity reports it, numpy need not warn
        with np.errstate(over="ignore", invalid="ignore"):
            return [np.asarray(o) for o in self._eval.run(None, feeds)]


def _spec(value: onnx.ValueInfoProto) -> TensorSpec:
    dims = tuple(d.dim_value or d.dim_param or None for d in value.type.tensor_type.shape.dim)
    return TensorSpec(value.name, dims, np.dtype(np.float32))
