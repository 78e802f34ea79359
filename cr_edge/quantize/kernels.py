"""The x86 AVX2 u8 x s8 integer kernel, emulated in numpy: what a machine without VNNI computes.

onnxruntime's MLAS multiplies uint8 activations by int8 weights on AVX2 with
``vpmaddubsw``: adjacent products along K are added in pairs and the pair sum is
*saturated* to int16 before ``vpmaddwd`` widens it to int32. With AVX-512 VNNI
(``vpdpbusd``) or on ARM (``sdot``/``udot``) the sums are exact, so a model that passes
there can overflow on an AVX2 laptop. Weights spread to +-127 (per-channel int8 after
cross-layer equalization) against activations near 255 reach ``2 * 255 * 127 = 64770``,
twice the int16 limit. The zero points are applied afterwards from exact row and
column sums, so the saturation acts on the raw codes, as here.

An integer convolution runs on the same kernel: MLAS unrolls the input into columns
(im2col, K ordered channel-major then kernel position, as the weight's own layout) and
multiplies them by the weight matrix, so ``integer_conv`` is ``integer_matmul`` over
those columns, the padding filled with the activation zero point (ConvInteger's rule).

Signed activations are shifted to unsigned (``a + 128``, zero point + 128) as MLAS does
on x86; ``u8 x u8`` uses a widening kernel that does not saturate; 7-bit weights
(``reduce_range``) keep every pair sum below ``2 * 255 * 64 = 32640`` and never saturate.
"""

from __future__ import annotations

import numpy as np

INT16_MIN, INT16_MAX = -32768, 32767
CHUNK = 64  # rows per step: products are (CHUNK, K, M) int32 in memory


def saturating_matmul(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, int]:
    """``a @ b`` of raw codes (``a`` (N, K) uint8, ``b`` (K, M) int8) with AVX2's int16 pair sums.

    Returns the int64 result and how many pair sums saturated.
    """
    a = a.astype(np.int32)
    b = b.astype(np.int32)
    k = a.shape[1]
    if k % 2:  # MLAS pads K with zeros to whole pairs
        a = np.pad(a, ((0, 0), (0, 1)))
        b = np.pad(b, ((0, 1), (0, 0)))
    pairs = b.reshape(-1, 2, b.shape[1])
    out = np.empty((a.shape[0], b.shape[1]), dtype=np.int64)
    saturated = 0
    for i in range(0, a.shape[0], CHUNK):
        rows = a[i : i + CHUNK].reshape(-1, pairs.shape[0], 2)
        sums = np.einsum("npt,ptm->npm", rows, pairs)  # exact pair sums, int32
        clipped = np.clip(sums, INT16_MIN, INT16_MAX)
        saturated += int(np.count_nonzero(clipped != sums))
        out[i : i + CHUNK] = clipped.sum(axis=1, dtype=np.int64)
    return out, saturated


def integer_matmul(
    a: np.ndarray, a_zero: np.ndarray | int, b: np.ndarray, b_zero: np.ndarray | int
) -> tuple[np.ndarray, int]:
    """``(a - a_zero) @ (b - b_zero)`` as the AVX2 kernel computes it, and the saturations.

    ``a`` is (N, K) uint8 or int8, ``b`` (K, M) int8 or uint8; ``b_zero`` is a scalar or
    one per column. Only ``u8 x s8`` saturates; the result is then exact otherwise.
    """
    a_zero = np.asarray(a_zero, dtype=np.int64)
    b_zero = np.asarray(b_zero, dtype=np.int64).reshape(-1)
    if a.dtype == np.int8:  # MLAS on x86 flips signed activations to unsigned
        a = (a.astype(np.int16) + 128).astype(np.uint8)
        a_zero = a_zero + 128
    if b.dtype == np.int8:
        raw, saturated = saturating_matmul(a, b)
    else:
        raw, saturated = a.astype(np.int64) @ b.astype(np.int64), 0
    k = a.shape[1]
    rows = a.astype(np.int64).sum(axis=1, keepdims=True)
    cols = b.astype(np.int64).sum(axis=0, keepdims=True)
    return raw - a_zero * cols - b_zero * rows + k * a_zero * b_zero, saturated


def can_saturate(a_dtype: np.dtype, b: np.ndarray) -> bool:
    """Whether any pair sum of ``a_dtype`` codes with the int8 weights ``b`` can leave int16."""
    if np.dtype(b.dtype) != np.int8:
        return False
    top = 255 if np.dtype(a_dtype) in (np.uint8, np.int8) else 0
    w = np.abs(b.astype(np.int32))
    return bool(top * 2 * int(w.max(initial=0)) > INT16_MAX)


def integer_conv(
    x: np.ndarray,
    x_zero: np.ndarray | int,
    w: np.ndarray,
    w_zero: np.ndarray | int,
    conv: dict,
) -> tuple[np.ndarray, int]:
    """ConvInteger as the AVX2 kernel computes it: ``(N, M, *out)`` int64 and the saturations.

    ``x`` is (N, C, *spatial) codes, ``w`` (M, C / group, *kernel); ``conv`` holds the
    ONNX attributes ``strides``, ``dilations``, ``pads`` and ``group`` (defaults as in ONNX).
    """
    nd = x.ndim - 2
    kernel = w.shape[2:]
    strides = conv.get("strides") or [1] * nd
    dilations = conv.get("dilations") or [1] * nd
    pads = conv.get("pads") or [0] * (2 * nd)
    group = int(conv.get("group") or 1)
    fill = int(np.asarray(x_zero).reshape(-1)[0]) if np.size(x_zero) else 0
    padded = np.pad(
        x, [(0, 0), (0, 0), *[(pads[i], pads[i + nd]) for i in range(nd)]], constant_values=fill
    )
    extent = [(k - 1) * d + 1 for k, d in zip(kernel, dilations, strict=True)]
    windows = np.lib.stride_tricks.sliding_window_view(padded, extent, axis=range(2, 2 + nd))
    picks = [slice(None, None, s) for s in strides] + [slice(None, None, d) for d in dilations]
    windows = windows[(slice(None), slice(None), *picks)]  # (N, C, *out, *kernel)
    out_shape = windows.shape[2 : 2 + nd]
    cols = windows.transpose(0, *range(2, 2 + nd), 1, *range(2 + nd, 2 + 2 * nd))
    cols = cols.reshape(x.shape[0] * int(np.prod(out_shape)), x.shape[1], -1)
    w_zero = np.broadcast_to(np.asarray(w_zero).reshape(-1), (w.shape[0],))
    c_in, m_out = x.shape[1] // group, w.shape[0] // group
    parts, saturated = [], 0
    for g in range(group):
        a = cols[:, g * c_in : (g + 1) * c_in].reshape(cols.shape[0], -1)
        b = w[g * m_out : (g + 1) * m_out].reshape(m_out, -1).T
        acc, sat = integer_matmul(
            np.ascontiguousarray(a), x_zero, b, w_zero[g * m_out : (g + 1) * m_out]
        )
        parts.append(acc)
        saturated += sat
    out = np.concatenate(parts, axis=1).reshape(x.shape[0], *out_shape, w.shape[0])
    return out.transpose(0, nd + 1, *range(1, nd + 1)), saturated
