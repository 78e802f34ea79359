"""The stage list an int8 ExecuTorch program is built from: the folds int8 weights survive.

XNNPACK's int8 Linear/Conv take one weight scale per output channel (a row), so a fold
that scales a layer's *rows* (the guard's ``1 / R``, the depressed shift's bias, the
constant term's bias) costs nothing, while one that scales its *columns* (the input
normalisation's ``1 / std``, a chain's leading coefficient ``a_n``) puts values of
different sizes under one scale. Measured against the oracle on digits-cr (60 epochs,
dynamic int8 activations): every fold, 18.4 output steps; none, 2.9 steps and 0.74x the
fp32 program's bytes; the row folds, with the leading coefficient, the input scale
behind the flatten and its offset in the first bias, see ``pte``'s docstring.

* The row folds run as the shipped export runs them, so the program clips where the
  shipped model does (the guard folds widen a depressed chain's guard; with the calibrated
  guard instead digits-cr's fp32 outputs alone were 5.6 output steps off the oracle).
* The leading coefficient folds only where that leaves the next layer's weight rounding,
  in the unfolded layer's units, no coarser (digits-cr: it helps; digits-conv: its
  per-channel ``a_n`` spread over one conv row made 25 steps of error).
* The input normalisation's scale (a column fold) stays an input Mul, moved behind a
  leading flatten (a reshape between two delegated ops splits the XNNPACK graph in two:
  1.6 KB more on digits-cr); its offset goes into the first layer's bias (``b + W o``:
  rows only), so ``int8_net`` runs the normalisation as that one Mul.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import Tensor, nn

from cr_edge.export import folds
from cr_edge.export.emit import PrimalNet
from cr_edge.export.stages import Affine, Flatten, InputAffine, Stage

INT8_MAX = 127  # XNNPACK's symmetric per-channel weights: codes -127..127
GUARD_FOLDS: tuple[folds.FoldPass, ...] = (folds.centred_range_guard, folds.unit_range_guard)


def int8_stages(
    stages: list[Stage], sample_shape: tuple[int, ...], clip_guard: bool = True
) -> list[Stage]:
    """``stages`` (unfolded, guarded) folded as far as per-row int8 weights allow.

    ``clip_guard``: as ``ExportOptions.clip_guard``, whether the shipped model's guards
    are the Clip folds (else its calibrated per-channel Max/Min, kept as they are).
    """
    row_folds = (folds.shift_to_depressed, *(GUARD_FOLDS if clip_guard else ()))
    stages = folds.run_passes(copy.deepcopy(stages), row_folds).stages
    leading = folds.fold_leading_coefficient(copy.deepcopy(stages)).stages
    if _rounding(leading, stages) <= _rounding(stages, stages):
        stages = leading
    stages = folds.fold_constant_term(stages).stages
    return _normalise_behind_flatten(stages, sample_shape)


def _rounding(stages: list[Stage], units: list[Stage]) -> float:
    """The largest relative int8 rounding error of any layer's weights, in ``units``' scale.

    ``units`` is the same net before a column fold: its weights' ratio to ``stages``'
    undoes the fold, so two foldings compare in the same units."""
    worst = 0.0
    for layer, base in zip(stages, units, strict=True):
        if not isinstance(layer, Affine):
            continue
        rows, w0 = (
            layer.weight.reshape(len(layer.weight), -1),
            base.weight.reshape(len(layer.weight), -1),
        )
        scale = np.abs(rows).max(axis=1, keepdims=True) / INT8_MAX
        error = np.rint(rows / np.where(scale > 0, scale, 1)) * scale - rows
        factor = np.divide(rows, w0, out=np.ones_like(rows), where=w0 != 0)
        size = np.linalg.norm(w0)
        worst = max(worst, float(np.linalg.norm(error / factor) / size) if size else 0.0)
    return worst


def _normalise_behind_flatten(stages: list[Stage], sample_shape: tuple[int, ...]) -> list[Stage]:
    """``[InputAffine, (Flatten,) Linear, ...]`` as ``[(Flatten,) x * scale, Linear + W o, ...]``."""
    if not stages or not isinstance(stages[0], InputAffine):
        return stages
    head, rest = stages[0], stages[1:]
    flatten = rest[:1] if rest and isinstance(rest[0], Flatten) else []
    first = rest[len(flatten)] if len(rest) > len(flatten) else None
    if not isinstance(first, Affine) or first.conv:
        return stages
    scale = np.broadcast_to(head.scale, sample_shape).reshape(-1)
    offset = np.broadcast_to(head.offset, sample_shape).reshape(-1)
    first.bias = first.bias + first.weight @ offset
    normalise = InputAffine(scale.copy(), np.zeros_like(scale))
    return [*flatten, normalise, *rest[len(flatten) :]]


class _Scale(nn.Module):
    """``h * scale``: an input normalisation whose offset is in the next layer's bias."""

    def __init__(self, scale: np.ndarray) -> None:
        super().__init__()
        self.register_buffer("scale", torch.tensor(scale, dtype=torch.float32))

    def forward(self, h: Tensor) -> Tensor:
        return h * self.scale


def int8_net(stages: list[Stage]) -> PrimalNet:
    """``PrimalNet(stages)``, a normalisation without offset run as its Mul alone."""
    net = PrimalNet(stages)
    for i, stage in enumerate(stages[: len(net.layers)]):
        if isinstance(stage, InputAffine) and not np.any(stage.offset):
            net.layers[i] = _Scale(np.asarray(stage.scale))
    return net
