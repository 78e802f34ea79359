"""The deploy-time view of a CR net: a flat list of stages in float64.

Export works on this list instead of on the ``nn.Module``: folding the
normalisation and the Horner end-points into neighbouring linear layers is
plain algebra on arrays, each fold a small pass (``cr_edge.export.folds``),
and the result is then emitted as torch ops for the exporters.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from cr_edge.checkpoint import Checkpoint
from cr_edge.errors import ExportError
from cr_edge.heads import OrdinalThresholds
from cr_edge.nets import ClosedFormAct, MeanEmbedding
from cr_edge.poly import PolyAct


@dataclass
class Affine:
    """``W h + b``: a Linear layer, or a Conv1d/Conv2d (weight rank 3/4) with ``padding``."""

    weight: np.ndarray
    bias: np.ndarray
    conv: bool = False
    padding: int = 0

    @property
    def spatial_dims(self) -> int:
        """0 for Linear, 1 for Conv1d (length), 2 for Conv2d (height, width)."""
        return self.weight.ndim - 2


@dataclass
class MeanEmbed:
    """Text input: Gather rows of ``table`` for int64 ids, then their mean over the non-pad ids.

    The derivative companion takes its direction at this stage's output (the pooled
    embedding): ids are discrete, the pooled embedding is the first continuous value.
    """

    table: np.ndarray  # (vocab, embed_dim); row pad_id is never read by the mean
    pad_id: int = 0


@dataclass
class InputAffine:
    """``x * scale + offset`` per channel: input normalisation that cannot fold into a padded conv."""

    scale: np.ndarray
    offset: np.ndarray


@dataclass
class Poly:
    """A polynomial activation in Horner form, with what the folds did to it.

    The true activation of the trained net is
    ``p(z) = scale * m(gain * (z + shift)) + folded_constant``, where ``m`` has ``coeffs``
    (ascending); ``scale`` went into the next layer's weights, ``folded_constant`` into its
    bias, ``gain`` and ``shift`` into the previous layer's rows and bias. ``unit``: the guard's
    range is ``[-1, 1]`` for every channel in ``m``'s coordinates (one scalar Clip).
    """

    coeffs: np.ndarray  # (degree + 1, channels or 1)
    rownorm_sq: np.ndarray  # ||W_i||^2 of the trained layer before it (for sensitivity)
    scale: np.ndarray = None  # type: ignore[assignment]
    shift: np.ndarray = None  # type: ignore[assignment]
    gain: np.ndarray = None  # type: ignore[assignment]
    lo: np.ndarray | None = None  # calibrated input range, in z coordinates
    hi: np.ndarray | None = None
    guard: bool = False
    monic: bool = False
    constant_folded: bool = False
    shifted: bool = False
    unit: bool = False
    # The net's own depressed form (shift s, coefficients of P in u = z + s), when it trained
    # one: the shift fold takes it as it is instead of deriving a shift from ``coeffs``.
    trained: tuple[np.ndarray, np.ndarray] | None = None
    positions: str = "sum"  # a conv layer's sensitivity over its positions, as DREG trained it
    notes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        width = self.coeffs.shape[1]
        if self.scale is None:
            self.scale = np.ones(width)
        if self.shift is None:
            self.shift = np.zeros(width)
        if self.gain is None:
            self.gain = np.ones(width)

    @property
    def degree(self) -> int:
        return self.coeffs.shape[0] - 1

    def skipped(self, k: int) -> bool:
        """True when coefficient ``k`` was folded away and needs no Add."""
        return (k == 0 and self.constant_folded) or (k == self.degree - 1 and self.shifted)

    def horner_nodes(self) -> int:
        """Elementwise Mul/Add nodes the chain costs once emitted."""
        muls = self.degree - 1 + (0 if self.monic else 1)
        adds = sum(not self.skipped(k) for k in range(self.degree))
        return muls + adds


@dataclass
class Act:
    """A closed-form baseline activation (relu or gelu)."""

    kind: str
    rownorm_sq: np.ndarray
    positions: str = "sum"  # as ``Poly.positions``


@dataclass
class Pool:
    kernel: int
    spatial_dims: int = 2  # AvgPool1d over a sequence, AvgPool2d over an image


@dataclass
class Flatten:
    pass


@dataclass
class Cumulative:
    """The ordinal head: cumulative logits ``P(y > k)`` -> class probabilities, expected rank.

    The shared score and its K-1 thresholds are already in the Affine before it (one row
    per threshold), so this stage holds no weights.
    """

    n_classes: int


Stage = Affine | MeanEmbed | InputAffine | Poly | Act | Pool | Flatten | Cumulative


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().double().numpy().copy()


def stages_from_checkpoint(ckpt: Checkpoint) -> list[Stage]:
    """The trained net as stages, its normalisation still a separate ``InputAffine``
    (text has none: its first stage is the ``MeanEmbed``)."""
    stages: list[Stage] = []
    norm = ckpt.normalisation
    if norm is not None:
        scale = 1.0 / norm.std.astype(np.float64)
        stages.append(InputAffine(scale, -norm.mean.astype(np.float64) * scale))
    last_affine: Affine | None = None
    positions = ckpt.net.config.dreg_positions
    for block in ckpt.net.blocks:
        if isinstance(block, MeanEmbedding):
            stages.append(MeanEmbed(_np(block.weight)))
        elif isinstance(block, nn.Linear):
            last_affine = Affine(_np(block.weight), _np(block.bias))
            stages.append(last_affine)
        elif isinstance(block, nn.Conv1d | nn.Conv2d):
            last_affine = Affine(_np(block.weight), _np(block.bias), True, _conv_padding(block))
            stages.append(last_affine)
        elif isinstance(block, PolyAct | ClosedFormAct):
            if last_affine is None:
                raise ExportError(f"activation {block} has no linear layer before it")
            w = last_affine.weight
            rn = (w.reshape(w.shape[0], -1) ** 2).sum(axis=1)
            if isinstance(block, PolyAct):
                stages.append(_poly(block, rn, positions))
            else:
                stages.append(Act(block.kind, rn, positions))
        elif isinstance(block, nn.AvgPool1d | nn.AvgPool2d):
            stages.append(_pool(block))
        elif isinstance(block, nn.Flatten):
            stages.append(Flatten())
        elif isinstance(block, OrdinalThresholds) and last_affine is not None:
            _thresholds_into(last_affine, _np(block.thresholds()))
            stages.append(Cumulative(len(last_affine.bias) + 1))
        else:
            raise ExportError(f"block {block.__class__.__name__} has no export lowering")
    if ckpt.target_scale is not None and last_affine is not None:
        # Regression: the net predicts (t - mean) / std; the graph returns t itself.
        last_affine.weight = last_affine.weight * ckpt.target_scale.std
        last_affine.bias = last_affine.bias * ckpt.target_scale.std + ckpt.target_scale.mean
    return stages


def _poly(block: PolyAct, rownorm_sq: np.ndarray, positions: str) -> Poly:
    """The activation in powers of ``z``; a depressed one also keeps its trained form."""
    if block.form == "monomial":
        return Poly(block.monomial(), rownorm_sq, positions=positions)
    trained = (block.shift_values(), block.centred())
    return Poly(block.monomial(), rownorm_sq, trained=trained, positions=positions)


def _conv_padding(block: nn.Conv1d | nn.Conv2d) -> int:
    """The one padding the lowering emits; refuses the conv options it has no lowering for."""
    dims = block.weight.dim() - 2
    ones = (1,) * dims
    why = []
    if block.stride != ones or block.dilation != ones or block.groups != 1:
        why.append("only stride 1, dilation 1, groups 1 export")
    if block.padding_mode != "zeros" or isinstance(block.padding, str):
        why.append(f"padding {block.padding!r} ({block.padding_mode}) is not a number of zeros")
    elif len(set(block.padding)) != 1:
        why.append(f"padding {block.padding} differs per axis")
    if why:
        raise ExportError(
            f"conv layer {block}: {'; '.join(why)}; export lowers only the convs cr_edge.nets builds"
        )
    return int(block.padding[0])


def _pool(block: nn.AvgPool1d | nn.AvgPool2d) -> Pool:
    """Only the non-overlapping, unpadded average pool that ``cr_edge.nets`` builds lowers."""
    dims = 1 if isinstance(block, nn.AvgPool1d) else 2
    kernel, stride, padding = (
        _single(getattr(block, k), block) for k in ("kernel_size", "stride", "padding")
    )
    if stride != kernel or padding != 0 or block.ceil_mode:
        raise ExportError(
            f"pooling layer {block}: only stride = kernel, no padding, floor mode export"
        )
    return Pool(kernel, dims)


def _single(value: int | tuple[int, ...], block: nn.Module) -> int:
    values = set(value) if isinstance(value, tuple) else {value}
    if len(values) != 1:
        raise ExportError(f"pooling layer {block}: {value} differs per axis; use a square pool")
    return int(values.pop())


def _thresholds_into(affine: Affine, thresholds: np.ndarray) -> None:
    """One score row ``w·h + b`` becomes K-1 rows ``w·h + b + b_k``: exact, no extra node."""
    affine.weight = np.repeat(affine.weight, len(thresholds), axis=0)
    affine.bias = np.repeat(affine.bias, len(thresholds)) + thresholds


@torch.no_grad()
def calibrate_ranges(ckpt: Checkpoint, x_raw: np.ndarray, stages: list[Stage]) -> None:
    """Per-channel min/max of every polynomial's input over ``x_raw``, stored on its stage."""
    polys = [s for s in stages if isinstance(s, Poly)]
    ranges = []
    norm = ckpt.normalisation
    h = torch.from_numpy(x_raw if norm is None else norm.apply(x_raw))
    for block in ckpt.net.blocks:
        if isinstance(block, PolyAct):
            flat = h.movedim(1, -1).reshape(-1, h.shape[1]).double()
            ranges.append((flat.min(0).values.numpy(), flat.max(0).values.numpy()))
        h = block(h)
    for poly, (lo, hi) in zip(polys, ranges, strict=True):
        poly.lo, poly.hi = lo, hi
