"""Derivative parity of the deployed primal graph itself: a secant across quantization steps.

The quantized companion treats every quantizer as the identity (straight-through),
so it can agree with PyTorch while the deployed graph, piecewise constant in ``x``,
moves differently. The secant ``(f(x + d) - f(x - d)) / 2`` of the primal, with
``d`` (along the oracle's ``v``) spanning several input quantization steps, is what the deployed model's
outputs actually do along ``v``; it is compared per sample with the fp32 model's
secant at the same step (cosine), at batch 1 as deployed.

A one-score head (regression, ordinal) has a rank-one Jacobian: along a ``v`` nearly
orthogonal to its gradient the fp32 secant is smaller than the output error the int8
tolerance allows at each of its two points, so its sign is noise and the cosine of two
such secants reads -1 for a model within tolerance. Such a sample has no direction to
compare: it passes when the two secants differ by no more than that output error
(``floor``), as ``validate`` holds a JVP below its error bound to the bound alone.
"""

from __future__ import annotations

import numpy as np

from cr_edge.artifacts import metadata as schema
from cr_edge.runtimes.runtime import Session
from cr_edge.validate.tolerances import INT8_LEVELS, INT8_OUTPUT_STEPS, SECANT_STEPS

ONE_SCORE_TASKS = ("regress", "ordinal")  # one score behind every output: J is rank one


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


def min_cosine(
    a: np.ndarray, b: np.ndarray, floor: float = 0.0, skip: np.ndarray | None = None
) -> float:
    """Least per-sample cosine of ``a`` with the reference ``b`` (samples on axis 0).

    A sample whose ``||b||`` and ``||a - b||`` are both within ``floor`` counts as 1
    (see the module docstring); samples in ``skip`` (at a kink, ``quantize.kinks``) are
    left out; NaN anywhere else makes the result NaN.
    """
    if skip is not None:
        a, b = a[~skip], b[~skip]
    n = a.shape[0]
    a, b = a.reshape(n, -1), b.reshape(n, -1)
    b_norm = np.linalg.norm(b, axis=1)
    norms = np.linalg.norm(a, axis=1) * b_norm
    cos = np.sum(a * b, axis=1) / np.maximum(norms, 1e-30)
    within = (b_norm <= floor) & (np.linalg.norm(a - b, axis=1) <= floor)
    return float(np.where(within, 1.0, cos).min())


def noise_floor(metadata: dict[str, str], output_step: float, outputs: int) -> float:
    """The secant difference two in-tolerance outputs can make, for a one-score head (the
    model's ``cr_edge.task`` is regress or ordinal): each point may be off by
    ``INT8_OUTPUT_STEPS`` steps per element, and ``(e+ - e-) / 2`` by as much, in norm.

    0 for any other model: a classifier's logits move in many directions, its secant has
    a direction wherever it is not zero, and the cosine stays the whole check (measured:
    under the 3-step floor the naive int8 policy's secant passed on digits-cr).
    """
    if schema.read(metadata).task not in ONE_SCORE_TASKS:
        return 0.0
    return INT8_OUTPUT_STEPS * output_step * float(np.sqrt(outputs))
