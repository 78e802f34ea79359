"""Exact folds of a CR net's stages, one small pass each, in one ordered list.

Each pass takes the stage list and returns a ``PassResult`` saying whether it
changed anything and, for every place it declined, why. All arithmetic is in
float64 on the trained weights; nothing here approximates the model.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from math import comb

import numpy as np

from cr_edge.export.stages import Act, Affine, Flatten, InputAffine, Poly, Pool, Stage

# The leading term |a_n| R^n must be at least this share of the largest term over the
# calibrated input range |z| <= R. Below it a_n is numerical dust: dividing by it would
# blow the other coefficients up to magnitudes that float32 evaluates poorly.
MIN_LEADING_SHARE = 1e-4
# A shift larger than this many input ranges would make z + shift lose z's low bits.
MAX_SHIFT_RANGES = 4.0


@dataclass
class PassResult:
    stages: list[Stage]
    modified: bool
    refusals: list[str] = field(default_factory=list)


FoldPass = Callable[[list[Stage]], PassResult]


def _next_affine(stages: list[Stage], i: int) -> tuple[Affine | None, bool]:
    """The linear layer fed by stage ``i`` through pools/flattens, and whether that path is clean."""
    for stage in stages[i + 1 :]:
        if isinstance(stage, Affine):
            return stage, True
        if not isinstance(stage, Pool | Flatten):
            return None, False
    return None, False


def _expand(per_channel: np.ndarray, affine: Affine) -> np.ndarray:
    """Per-channel values laid out along the next layer's input axis (flatten is channel-major)."""
    n_in = affine.weight.shape[1]
    if per_channel.shape[0] == 1:
        return np.full(n_in, per_channel[0])
    return np.repeat(per_channel, n_in // per_channel.shape[0])


def _input_weights(affine: Affine, factors: np.ndarray) -> None:
    """Scale the next layer's weights column-wise (per input channel/feature)."""
    shape = (1, -1) + (1,) * (affine.weight.ndim - 2)
    affine.weight = affine.weight * _expand(factors, affine).reshape(shape)


def _input_constant(affine: Affine, constant: np.ndarray) -> None:
    """Fold a per-channel constant input into the bias: b += W @ c."""
    c = _expand(constant, affine)
    w = affine.weight
    affine.bias = affine.bias + w.sum(axis=tuple(range(2, w.ndim))) @ c  # conv: sum the taps


def _range(poly: Poly) -> np.ndarray:
    if poly.unit:  # the chain's input lies in [-1, 1] for every channel
        return np.ones(poly.coeffs.shape[1])
    if poly.lo is None or poly.hi is None:
        return np.ones(poly.coeffs.shape[1])
    r = np.maximum(np.abs(poly.lo), np.abs(poly.hi))
    r = np.maximum(r, 1e-6)
    return r if poly.coeffs.shape[1] > 1 else np.array([r.max()])


def leading_share(poly: Poly) -> np.ndarray:
    """Per channel: |a_n| R^n over the largest |a_k| R^k, R the calibrated input range."""
    r = _range(poly)
    k = np.arange(poly.degree + 1).reshape(-1, 1)
    terms = np.abs(poly.coeffs) * r.reshape(1, -1) ** k
    return terms[-1] / np.maximum(terms.max(axis=0), 1e-300)


def fold_input_normalisation(stages: list[Stage]) -> PassResult:
    """``(x - mean) / std`` into the first layer; kept apart only before a zero-padded conv."""
    head = stages[0]
    if not isinstance(head, InputAffine):
        return PassResult(stages, False)
    first, clean = _next_affine(stages, 0)
    if first is None or not clean:
        return PassResult(stages, False, ["normalisation kept: no linear layer follows the input"])
    if first.conv and first.padding:
        return PassResult(
            stages,
            False,
            [
                "normalisation kept as an input Mul/Add: the first conv is zero-padded, and padding "
                "raw zeros is not padding normalised zeros"
            ],
        )
    scale, offset = head.scale.reshape(-1), head.offset.reshape(-1)
    _input_constant(first, offset)
    _input_weights(first, scale)
    return PassResult(stages[1:], True)


def _substitute(a: np.ndarray, offset: np.ndarray, factor: np.ndarray) -> np.ndarray:
    """Coefficients of ``p(offset + factor * t)`` in ``t``, per channel (columns of ``a``)."""
    n = a.shape[0] - 1
    q = np.zeros_like(a)
    for j in range(n + 1):
        for k in range(j, n + 1):
            q[j] += a[k] * comb(k, j) * offset ** (k - j)
        q[j] *= factor**j
    return q


def unit_range_guard(stages: list[Stage]) -> PassResult:
    """Map every channel's guarded range onto ``[-1, 1]`` through the previous layer's rows.

    ``t = (z - mid) / half`` per channel goes into the previous layer's weights and bias, and
    ``p(mid + half * t)`` into the chain, so the guard becomes one ``Clip(t, -1, 1)`` with
    scalar bounds instead of a ``Max``/``Min`` pair with per-channel bounds. It fixes the
    chain's origin, so ``shift_to_depressed`` leaves these polynomials alone; the node count
    is the same (the shift saves one Add, the Clip one node of the pair), and centred
    coordinates suit float32 Horner.
    """
    modified, refusals = False, []
    for i, poly in enumerate(stages):
        if not isinstance(poly, Poly) or not poly.guard or poly.unit:
            continue
        prev = stages[i - 1]
        if not isinstance(prev, Affine) or prev.bias.shape != poly.lo.shape:
            refusals.append(f"stage {i}: guard kept per channel: no linear layer right before it")
            continue
        mid, half = (poly.hi + poly.lo) / 2, np.maximum((poly.hi - poly.lo) / 2, 1e-6)
        coeffs = np.broadcast_to(poly.coeffs, (poly.degree + 1, mid.shape[0]))
        poly.coeffs = _substitute(coeffs, mid, half)
        poly.scale = np.broadcast_to(poly.scale, mid.shape).copy()
        poly.gain, poly.shift, poly.unit = 1.0 / half, -mid, True
        shape = (-1,) + (1,) * (prev.weight.ndim - 1)
        prev.weight = prev.weight / half.reshape(shape)
        prev.bias = (prev.bias - mid) / half
        modified = True
    return PassResult(stages, modified, refusals)


def shift_to_depressed(stages: list[Stage]) -> PassResult:
    """Remove the ``z**(n-1)`` term by shifting ``z`` through the previous layer's bias."""
    modified, refusals = False, []
    for i, poly in enumerate(stages):
        if not isinstance(poly, Poly) or poly.degree < 2 or poly.lo is None or poly.unit:
            continue
        prev = stages[i - 1]
        share = leading_share(poly)
        if not isinstance(prev, Affine):
            refusals.append(f"stage {i}: no linear layer right before the polynomial to shift into")
            continue
        if share.min() < MIN_LEADING_SHARE:
            refusals.append(
                f"stage {i}: leading coefficient too small to shift "
                f"(share {share.min():.1e} < {MIN_LEADING_SHARE:.0e})"
            )
            continue
        n, a = poly.degree, poly.coeffs
        s = a[n - 1] / (n * a[n])
        if np.any(np.abs(s) > MAX_SHIFT_RANGES * _range(poly)):
            refusals.append(
                f"stage {i}: shift {np.abs(s).max():.3g} exceeds "
                f"{MAX_SHIFT_RANGES:g} input ranges; kept the unshifted chain"
            )
            continue
        q = _substitute(a, -s, np.ones_like(s))  # q(t) = p(t - s)
        q[n - 1] = 0.0
        poly.coeffs, poly.shift, poly.shifted = q, poly.shift + s, True
        prev.bias = prev.bias + (s if s.shape[0] == prev.bias.shape[0] else s[0])
        modified = True
    return PassResult(stages, modified, refusals)


def fold_leading_coefficient(stages: list[Stage]) -> PassResult:
    """Divide the chain by ``a_n`` (it becomes monic) and multiply the next weights by it."""
    modified, refusals = False, []
    for i, poly in enumerate(stages):
        if not isinstance(poly, Poly) or poly.monic:
            continue
        nxt, clean = _next_affine(stages, i)
        if nxt is None or not clean:
            refusals.append(f"stage {i}: leading coefficient kept: no linear layer follows")
            continue
        share = leading_share(poly)
        if share.min() < MIN_LEADING_SHARE:
            refusals.append(
                f"stage {i}: leading coefficient too small to fold "
                f"(share {share.min():.1e} < {MIN_LEADING_SHARE:.0e})"
            )
            continue
        lead = poly.coeffs[-1].copy()
        _input_weights(nxt, lead)
        poly.coeffs = poly.coeffs / lead
        poly.coeffs[-1] = 1.0
        poly.scale, poly.monic, modified = poly.scale * lead, True, True
    return PassResult(stages, modified, refusals)


def fold_constant_term(stages: list[Stage]) -> PassResult:
    """Add ``a_0`` (times the next weights) to the next layer's bias and drop the chain's last Add."""
    modified, refusals = False, []
    for i, poly in enumerate(stages):
        if not isinstance(poly, Poly) or poly.constant_folded:
            continue
        nxt, clean = _next_affine(stages, i)
        if nxt is None or not clean:
            refusals.append(f"stage {i}: constant term kept: no linear layer follows")
            continue
        if nxt.conv and nxt.padding:
            refusals.append(
                f"stage {i}: constant term kept: the next conv is zero-padded, so "
                "the constant would be wrong at the border"
            )
            continue
        _input_constant(nxt, poly.coeffs[0])
        poly.coeffs = poly.coeffs.copy()
        poly.coeffs[0] = 0.0
        poly.constant_folded, modified = True, True
    return PassResult(stages, modified, refusals)


# The order matters: the shift rewrites the coefficients whose end-points the next two fold.
DEFAULT_PASSES: tuple[FoldPass, ...] = (
    fold_input_normalisation,
    shift_to_depressed,
    fold_leading_coefficient,
    fold_constant_term,
)
# ExportOptions.clip_guard: the guard's rescale first, as it also fixes the chain's origin.
CLIP_GUARD_PASSES: tuple[FoldPass, ...] = (
    fold_input_normalisation,
    unit_range_guard,
    *DEFAULT_PASSES[1:],
)


def run_passes(stages: list[Stage], passes: tuple[FoldPass, ...] = DEFAULT_PASSES) -> PassResult:
    """Apply ``passes`` in order; the refusals of all of them are collected."""
    modified, refusals = False, []
    for fold in passes:
        result = fold(stages)
        stages, modified = result.stages, modified or result.modified
        refusals += [f"{fold.__name__}: {r}" for r in result.refusals]
    return PassResult(stages, modified, refusals)


def activation_stages(stages: list[Stage]) -> list[Poly | Act]:
    return [s for s in stages if isinstance(s, Poly | Act)]
