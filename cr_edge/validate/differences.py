"""Central finite differences of a model along directions: the step rule and the estimate.

Shared by ``parity`` (the float32 estimate a runtime is judged by) and ``rounding`` (the
same estimate in float32 and float64 on the CPU, whose gap to the float64 derivative
bounds the estimate's own error). Policy (how close is close enough) lives in
``tolerances``; this module only computes. numpy only.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

# Machine epsilon of the arithmetic a model computes in, for the finite-difference step.
COMPUTE_EPS = {
    "fp32": float(np.finfo(np.float32).eps),
    "fp16": float(np.finfo(np.float16).eps),
    "fp64": float(np.finfo(np.float64).eps),  # the float64 copy's reference derivative
}
_TINY = float(np.finfo(np.float32).eps)


def finite_difference_steps(
    x: np.ndarray, v: np.ndarray, precision: str, scale: np.ndarray | float = 1.0
) -> np.ndarray:
    """Per-sample central-difference step ``h = eps**(1/3) * (1 + ||x/s||) / ||v/s||``.

    ``x`` and ``v`` have the samples on axis 0; ``scale`` (``s``, see ``input_scale``)
    broadcasts against one sample. The result has shape ``(n,)`` in float64.
    """
    n = x.shape[0]
    s = np.asarray(scale, dtype=np.float64)
    x_norm = np.linalg.norm((x.astype(np.float64) / s).reshape(n, -1), axis=1)
    v_norm = np.linalg.norm((v.astype(np.float64) / s).reshape(n, -1), axis=1)
    return COMPUTE_EPS[precision] ** (1 / 3) * (1 + x_norm) / np.where(v_norm > 0, v_norm, 1.0)


def input_scale(x: np.ndarray) -> np.ndarray:
    """Each feature's standard deviation over the samples ``x`` (axis 0), the unit of the
    finite-difference step. A feature that never moves counts as a tenth of the median
    spread (a constant pixel), and all of them as 1 when none moves (a single sample)."""
    spread = x.astype(np.float64).std(axis=0)
    moving = spread[spread > 0]
    if not moving.size:
        return np.ones_like(spread)
    return np.maximum(spread, 0.1 * np.median(moving))


def richardson(
    run: Callable[[np.ndarray], np.ndarray], x: np.ndarray, v: np.ndarray, steps: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Richardson-combined central differences, and how far they trust themselves, per sample.

    ``D(h) = (f(x + h v) - f(x - h v)) / 2h``; ``R(h) = (4 D(h/2) - D(h)) / 3`` cancels
    the ``h^2`` error term. Returns ``R(h)`` and the spread ``||R(h) - R(h/2)|| / ||R(h)||``,
    large where a kink lies within the step. ``run`` maps a batch of inputs (in ``x``'s
    dtype, which is the arithmetic measured) to the first output; all six evaluations
    per sample run as one batch.
    """
    n = x.shape[0]
    base = x.astype(np.float64)
    scales = (1.0, 0.5, 0.25)
    points = []
    for scale in scales:
        h = (steps * scale).reshape((n,) + (1,) * (x.ndim - 1))
        points += [(base + h * v).astype(x.dtype), (base - h * v).astype(x.dtype)]
    out = np.asarray(run(np.concatenate(points))).astype(np.float64)
    f = out.reshape((2 * len(scales), n, *out.shape[1:]))
    h = steps.reshape((n,) + (1,) * (out.ndim - 1))
    with np.errstate(all="ignore"):  # a broken model's Inf/NaN fails the comparison instead
        d = [(f[2 * k] - f[2 * k + 1]) / (2 * h * s) for k, s in enumerate(scales)]
        coarse, fine = (4 * d[1] - d[0]) / 3, (4 * d[2] - d[1]) / 3
        size = np.linalg.norm(coarse.reshape(n, -1), axis=1)
        spread = np.linalg.norm((coarse - fine).reshape(n, -1), axis=1) / np.maximum(size, _TINY)
    return coarse, spread


def relative(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-sample ``||a - b|| / ||b||`` (samples on axis 0), in float64."""
    n = b.shape[0]
    a64, b64 = a.astype(np.float64).reshape(n, -1), b.astype(np.float64).reshape(n, -1)
    with np.errstate(all="ignore"):
        size = np.linalg.norm(b64, axis=1)
        return np.linalg.norm(a64 - b64, axis=1) / np.maximum(size, _TINY)
