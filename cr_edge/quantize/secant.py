"""Derivative parity of the deployed primal graph itself: a secant across quantization steps.

The quantized companion treats every quantizer as the identity (straight-through),
so it can agree with PyTorch while the deployed graph, piecewise constant in ``x``,
moves differently. The secant ``(f(x + d) - f(x - d)) / 2`` of the primal, with
``d`` (along the oracle's ``v``) spanning several input quantization steps, is what the deployed model's
outputs actually do along ``v``; it is compared per sample with the fp32 model's
secant at the same step (cosine), at batch 1 as deployed.
"""

from __future__ import annotations

import numpy as np

from cr_edge.runtimes.runtime import Session
from cr_edge.validate.tolerances import INT8_LEVELS, SECANT_STEPS


def secant_displacement(calib: np.ndarray, v: np.ndarray) -> np.ndarray:
    """``d = s * v`` with ``s`` per input feature ``SECANT_STEPS`` steps of an 8-bit quantizer
    of that feature's calibration range (raw inputs differ by orders of magnitude between
    features, so one step for all would be nothing for some and everything for others).

    A feature that never moves counts as a tenth of the median range.
    """
    span = np.ptp(calib.astype(np.float64), axis=0)
    span = np.maximum(span, 0.1 * np.median(span))
    return (SECANT_STEPS * span / INT8_LEVELS * v).astype(np.float32)


def secant(session: Session, x: np.ndarray, d: np.ndarray) -> np.ndarray:
    """Central secant ``(f(x + d) - f(x - d)) / 2`` of the first output, per sample."""
    name = session.input_names[0]
    plus = session.run_all({name: (x + d).astype(np.float32)})[0]
    minus = session.run_all({name: (x - d).astype(np.float32)})[0]
    return (plus.astype(np.float64) - minus) / 2


def min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Least per-sample cosine of ``a`` with ``b`` (samples on axis 0)."""
    n = a.shape[0]
    a, b = a.reshape(n, -1), b.reshape(n, -1)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    cos = np.sum(a * b, axis=1) / np.maximum(norms, 1e-30)
    return float(cos.min())
