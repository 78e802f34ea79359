"""Exact folds of a CR net's stages, one small pass each, in one ordered list.

Each pass takes the stage list and returns a ``FoldResult`` saying whether it
changed anything and, for every place it declined, why. All arithmetic is in
float64 on the trained weights; nothing here approximates the model.

These run before any ONNX graph exists, over the stage list, so their result is not
onnx-ir's ``ir.passes.PassResult`` (whose ``model`` is an ``ir.Model``) and does not
take its name: a fold's result carries stages and refusals. The graph passes of the
exported model (``export.cleanup``, ``quantize.*``) are onnx-ir passes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from cr_edge.export.stages import Act, Affine, Flatten, InputAffine, Poly, Pool, Stage
from cr_edge.poly import substitute

# The leading term |a_n| R^n must be at least this share of the largest term over the
# calibrated input range |z| <= R. Below it a_n is numerical dust: dividing by it would
# blow the other coefficients up to magnitudes that float32 evaluates poorly.
MIN_LEADING_SHARE = 1e-4
# A shift larger than this many input ranges would make z + shift lose z's low bits.
MAX_SHIFT_RANGES = 4.0
# The symmetric Clip of a depressed chain guards [centre - R, centre + R]; it may span at most
# this many times the calibrated guard's span, or the chain takes the unit-range Clip instead.
MAX_GUARD_WIDENING = 3.0


@dataclass
class FoldResult:
    """What a fold pass made of the stage list: the stages, whether they changed, and why not."""

    stages: list[Stage]
    modified: bool
    refusals: list[str] = field(default_factory=list)


FoldPass = Callable[[list[Stage]], FoldResult]


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
    """Per channel, the largest ``|t|`` the chain sees, in its own (shifted, scaled) input."""
    if poly.unit:  # the chain's input lies in [-1, 1] for every channel
        return np.ones(poly.coeffs.shape[1])
    if poly.lo is None or poly.hi is None:
        return np.ones(poly.coeffs.shape[1])
    ends = [np.abs((end + poly.shift) * poly.gain) for end in (poly.lo, poly.hi)]
    r = np.maximum(*ends)
    r = np.maximum(r, 1e-6)
    return r if poly.coeffs.shape[1] > 1 else np.array([r.max()])


def leading_share(poly: Poly) -> np.ndarray:
    """Per channel: |a_n| R^n over the largest |a_k| R^k, R the calibrated input range."""
    r = _range(poly)
    k = np.arange(poly.degree + 1).reshape(-1, 1)
    terms = np.abs(poly.coeffs) * r.reshape(1, -1) ** k
    return terms[-1] / np.maximum(terms.max(axis=0), 1e-300)


def fold_input_normalisation(stages: list[Stage]) -> FoldResult:
    """``(x - mean) / std`` into the first layer; kept apart only before a zero-padded conv."""
    head = stages[0]
    if not isinstance(head, InputAffine):
        return FoldResult(stages, False)
    first, clean = _next_affine(stages, 0)
    if first is None or not clean:
        return FoldResult(stages, False, ["normalisation kept: no linear layer follows the input"])
    if first.conv and first.padding:
        return FoldResult(
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
    return FoldResult(stages[1:], True)


def _onto_unit(poly: Poly, prev: Affine, offset: np.ndarray, half: np.ndarray) -> None:
    """``t = (u - offset) / half`` through ``prev``'s rows, ``m(offset + half t)`` into the chain.

    ``u = z + shift`` is the chain's input before (``prev``'s bias already holds the shift).
    """
    coeffs = np.broadcast_to(poly.coeffs, (poly.degree + 1, half.shape[0]))
    poly.coeffs = substitute(coeffs, offset, half)
    poly.scale = np.broadcast_to(poly.scale, half.shape).copy()
    poly.shift = np.broadcast_to(poly.shift, half.shape) - offset
    poly.gain, poly.unit = 1.0 / half, True
    shape = (-1,) + (1,) * (prev.weight.ndim - 1)
    prev.weight = prev.weight / half.reshape(shape)
    prev.bias = (prev.bias - offset) / half


def _guarded_after_affine(stages: list[Stage], i: int) -> tuple[Poly, Affine] | None:
    poly, prev = stages[i], stages[i - 1]
    if not isinstance(poly, Poly) or not poly.guard or poly.unit:
        return None
    if not isinstance(prev, Affine) or prev.bias.shape != poly.lo.shape:
        return None
    return poly, prev


def centred_range_guard(stages: list[Stage]) -> FoldResult:
    """A depressed chain's guard as one ``Clip(t, -1, 1)`` that keeps it depressed.

    Scaling ``u = z + s`` by ``1 / R`` adds no ``t**(n-1)`` term (a shift would), so each
    channel's guard is widened to ``[-s - R, -s + R]``, symmetric about the chain's centre
    ``-s`` and covering the calibrated guard, and ``t = u / R`` goes into the previous layer:
    one Clip and ``2n - 3`` nodes. Declined where a centre lies so far out that the symmetric
    range would span over ``MAX_GUARD_WIDENING`` times the guard's own.
    """
    modified, refusals = False, []
    for i in range(1, len(stages)):
        found = _guarded_after_affine(stages, i)
        if found is None or not found[0].shifted:
            continue
        poly, prev = found
        centre = -np.broadcast_to(poly.shift, poly.lo.shape)
        radius = np.maximum(np.maximum(centre - poly.lo, poly.hi - centre), 1e-6)
        widening = (2 * radius / np.maximum(poly.hi - poly.lo, 1e-6)).max()
        if widening > MAX_GUARD_WIDENING:
            refusals.append(
                f"stage {i}: a chain's centre lies outside its guard (the symmetric range "
                f"would span {widening:.3g}x the guard's, over {MAX_GUARD_WIDENING:g}x); "
                "the guard maps the range onto [-1, 1] instead"
            )
            continue
        _onto_unit(poly, prev, np.zeros_like(radius), radius)
        poly.lo, poly.hi = centre - radius, centre + radius
        modified = True
    return FoldResult(stages, modified, refusals)


def unit_range_guard(stages: list[Stage]) -> FoldResult:
    """Map every channel's guarded range onto ``[-1, 1]`` through the previous layer's rows.

    ``t = (z - mid) / half`` per channel goes into the previous layer's weights and bias, and
    ``p(mid + half * t)`` into the chain, so the guard becomes one ``Clip(t, -1, 1)`` with
    scalar bounds instead of a ``Max``/``Min`` pair with per-channel bounds. It fixes the
    chain's origin, so a depressed chain here gets its ``t**(n-1)`` term back (one Add);
    ``centred_range_guard`` keeps those depressed where it can.
    """
    modified, refusals = False, []
    for i in range(1, len(stages)):
        found = _guarded_after_affine(stages, i)
        if found is None:
            if isinstance(stages[i], Poly) and stages[i].guard and not stages[i].unit:
                refusals.append(f"stage {i}: guard kept per channel: no linear layer before it")
            continue
        poly, prev = found
        mid, half = (poly.hi + poly.lo) / 2, np.maximum((poly.hi - poly.lo) / 2, 1e-6)
        _onto_unit(poly, prev, mid + poly.shift, half)
        poly.shifted, modified = False, True
    return FoldResult(stages, modified, refusals)


def shift_to_depressed(stages: list[Stage]) -> FoldResult:
    """Remove the ``z**(n-1)`` term by shifting ``z`` through the previous layer's bias.

    A net trained in the depressed form brings its shift along (``Poly.trained``): it is folded
    as it is, since the net itself evaluates at ``z + s`` in float32. Otherwise the shift is
    derived from the coefficients and refused where that would cost float32 bits.
    """
    modified, refusals = False, []
    for i, poly in enumerate(stages):
        if not isinstance(poly, Poly) or poly.degree < 2 or poly.lo is None or poly.unit:
            continue
        prev = stages[i - 1]
        if not isinstance(prev, Affine):
            refusals.append(f"stage {i}: no linear layer right before the polynomial to shift into")
            continue
        if poly.trained is not None:
            s, q = poly.trained
            _shift_into(poly, prev, s, q)
            modified = True
            continue
        share = leading_share(poly)
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
        q = substitute(a, -s)  # q(t) = p(t - s)
        q[n - 1] = 0.0
        _shift_into(poly, prev, s, q)
        modified = True
    return FoldResult(stages, modified, refusals)


def _shift_into(poly: Poly, prev: Affine, s: np.ndarray, q: np.ndarray) -> None:
    """The chain becomes ``q(z + s)``, its ``z + s`` computed by ``prev``'s bias."""
    poly.coeffs, poly.shift, poly.shifted = q, poly.shift + s, True
    prev.bias = prev.bias + (s if s.shape[0] == prev.bias.shape[0] else s[0])


def fold_leading_coefficient(stages: list[Stage]) -> FoldResult:
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
    return FoldResult(stages, modified, refusals)


def fold_constant_term(stages: list[Stage]) -> FoldResult:
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
    return FoldResult(stages, modified, refusals)


# The order matters: the shift rewrites the coefficients whose end-points the next two fold.
DEFAULT_PASSES: tuple[FoldPass, ...] = (
    fold_input_normalisation,
    shift_to_depressed,
    fold_leading_coefficient,
    fold_constant_term,
)
# ExportOptions.clip_guard: after the shift, the depressed chains take the symmetric Clip and
# the others the unit-range one; both rescale the chain before its end-points fold.
CLIP_GUARD_PASSES: tuple[FoldPass, ...] = (
    fold_input_normalisation,
    shift_to_depressed,
    centred_range_guard,
    unit_range_guard,
    *DEFAULT_PASSES[2:],
)


def run_passes(stages: list[Stage], passes: tuple[FoldPass, ...] = DEFAULT_PASSES) -> FoldResult:
    """Apply ``passes`` in order; the refusals of all of them are collected."""
    modified, refusals = False, []
    for fold in passes:
        result = fold(stages)
        stages, modified = result.stages, modified or result.modified
        refusals += [f"{fold.__name__}: {r}" for r in result.refusals]
    return FoldResult(stages, modified, refusals)


def activation_stages(stages: list[Stage]) -> list[Poly | Act]:
    return [s for s in stages if isinstance(s, Poly | Act)]
