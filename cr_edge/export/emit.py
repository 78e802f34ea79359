"""Stages -> plain torch modules that the exporters trace into Mul/Add/Gemm graphs.

``PrimalNet`` is what ships (``model.onnx``, ``model.pte``): the Horner chain
with folded end-points, an optional domain guard and an optional sensitivity
output. ``JvpNet`` is the derivative companion: the same stages in forward
mode, ``(x, v) -> (y, J(x) v)``, built from the analytic ``p'``; for text ``x`` is the
int64 ids and ``v`` a direction at the pooled embedding.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cr_edge import dreg
from cr_edge.export.stages import (
    Act,
    Affine,
    Cumulative,
    Flatten,
    InputAffine,
    MeanEmbed,
    Poly,
    Pool,
    Stage,
)
from cr_edge.heads import ordinal_outputs
from cr_edge.poly import derivative_coeffs


def _horner(coeffs: Tensor, t: Tensor) -> Tensor:
    """Horner over a stacked coefficient buffer; starts with a Mul so no Expand is traced."""
    if coeffs.shape[0] == 1:  # a constant derivative (degree-1 polynomial)
        return t * 0.0 + coeffs[0]
    acc = t * coeffs[-1] + coeffs[-2]
    for k in range(coeffs.shape[0] - 3, -1, -1):
        acc = acc * t + coeffs[k]
    return acc


def _buffer(module: nn.Module, name: str, value: np.ndarray, spatial: int) -> None:
    """``spatial`` is the number of axes after the channel (0 flat, 1 sequence, 2 image)."""
    t = torch.tensor(np.asarray(value), dtype=torch.float32)
    ones = (1,) * spatial
    if spatial and t.dim() == 1:
        t = t.view(-1, *ones)
    elif spatial and t.dim() == 2:  # a stack of per-channel coefficients (k, C): rows broadcast
        t = t.view(t.shape[0], -1, *ones)
    module.register_buffer(name, t)


class _Affine(nn.Module):
    def __init__(self, stage: Affine) -> None:
        super().__init__()
        self.padding = stage.padding
        self.conv = {0: None, 1: F.conv1d, 2: F.conv2d}[stage.spatial_dims]
        _buffer(self, "weight", stage.weight, 0)
        _buffer(self, "bias", stage.bias, 0)

    def forward(self, h: Tensor) -> Tensor:
        if self.conv:
            return self.conv(h, self.weight, self.bias, padding=self.padding)
        return F.linear(h, self.weight, self.bias)

    def tangent(self, h: Tensor, dh: Tensor) -> tuple[Tensor, Tensor]:
        if self.conv:
            return self(h), self.conv(dh, self.weight, padding=self.padding)
        return self(h), F.linear(dh, self.weight)


class _MeanEmbed(nn.Module):
    """int64 ids -> Gather -> the mean over the ids that are not ``pad_id`` (a text of
    padding only pools to zeros, as in ``cr_edge.nets.MeanEmbedding``)."""

    def __init__(self, stage: MeanEmbed) -> None:
        super().__init__()
        self.pad_id = stage.pad_id
        _buffer(self, "table", stage.table, 0)

    def forward(self, ids: Tensor) -> Tensor:
        mask = (ids != self.pad_id).to(torch.float32).unsqueeze(-1)
        summed = (F.embedding(ids, self.table) * mask).sum(dim=1)
        return summed / mask.sum(dim=1).clamp(min=1.0)

    def tangent(self, ids: Tensor, dpooled: Tensor) -> tuple[Tensor, Tensor]:
        """The direction is given at the pooled embedding: it passes through unchanged."""
        return self(ids), dpooled


class _InputAffine(nn.Module):
    def __init__(self, stage: InputAffine, spatial: int) -> None:
        super().__init__()
        _buffer(self, "scale", stage.scale, spatial)
        _buffer(self, "offset", stage.offset, spatial)

    def forward(self, h: Tensor) -> Tensor:
        return h * self.scale + self.offset

    def tangent(self, h: Tensor, dh: Tensor) -> tuple[Tensor, Tensor]:
        return self(h), dh * self.scale


class _Linear(nn.Module):
    """Pooling and flattening: linear maps that pass tangents through unchanged in form."""

    def __init__(self, stage: Pool | Flatten) -> None:
        super().__init__()
        self.kernel = stage.kernel if isinstance(stage, Pool) else 0
        self.pool = (
            F.avg_pool1d if isinstance(stage, Pool) and stage.spatial_dims == 1 else F.avg_pool2d
        )

    def forward(self, h: Tensor) -> Tensor:
        return self.pool(h, self.kernel) if self.kernel else torch.flatten(h, 1)

    def tangent(self, h: Tensor, dh: Tensor) -> tuple[Tensor, Tensor]:
        return self(h), self(dh)


class _Poly(nn.Module):
    """``m(t)`` as a Horner chain of Mul/Add, skipping the coefficients the folds removed."""

    def __init__(self, stage: Poly, spatial: int) -> None:
        super().__init__()
        self.degree, self.monic, self.guard = stage.degree, stage.monic, stage.guard
        self.unit = stage.guard and stage.unit
        self.used = [k for k in range(stage.degree) if not stage.skipped(k)]
        for k in self.used:
            _buffer(self, f"c{k}", stage.coeffs[k], spatial)
        if not stage.monic:
            _buffer(self, f"c{stage.degree}", stage.coeffs[-1], spatial)
        _buffer(self, "dm", derivative_coeffs(torch.from_numpy(stage.coeffs)).numpy(), spatial)
        # dp/dz = scale * m'(t) * gain, with t = gain * (z + shift) the chain's input
        m_deriv = derivative_coeffs(torch.from_numpy(stage.coeffs)).numpy()
        _buffer(self, "dp", m_deriv * stage.scale * stage.gain, spatial)
        _buffer(self, "rownorm", stage.rownorm_sq, 0)
        self.positions = stage.positions
        if stage.guard and not self.unit:
            _buffer(self, "lo", (stage.lo + stage.shift) * stage.gain, spatial)
            _buffer(self, "hi", (stage.hi + stage.shift) * stage.gain, spatial)

    def _clip(self, t: Tensor) -> Tensor:
        """One scalar ``Clip`` when the folds mapped every channel onto ``[-1, 1]``."""
        if self.unit:
            return torch.clamp(t, -1.0, 1.0)
        return torch.minimum(torch.maximum(t, self.lo), self.hi) if self.guard else t

    def _inside(self, t: Tensor) -> Tensor:
        if self.unit:
            return ((t >= -1.0) & (t <= 1.0)).to(t.dtype)
        return ((t >= self.lo) & (t <= self.hi)).to(t.dtype)

    def forward(self, t: Tensor) -> Tensor:
        t = self._clip(t)
        acc = t if self.monic else t * getattr(self, f"c{self.degree}")
        for k in range(self.degree - 1, -1, -1):
            if k in self.used:
                acc = acc + getattr(self, f"c{k}")
            if k > 0:
                acc = acc * t
        return acc

    def tangent(self, t: Tensor, dt: Tensor) -> tuple[Tensor, Tensor]:
        tc = self._clip(t)
        slope = _horner(self.dm, tc)
        if self.guard:  # the clip's derivative: zero where the guard holds the input
            slope = slope * self._inside(t)
        return self(t), slope * dt

    def sensitivity(self, t: Tensor) -> Tensor:
        """This layer's ``||J||_F^2`` per sample, from ``p'`` of the unguarded input."""
        return _jacobian_sq(_horner(self.dp, t), self.rownorm, self.positions)


class _Act(nn.Module):
    def __init__(self, stage: Act) -> None:
        super().__init__()
        self.kind = stage.kind
        self.positions = stage.positions
        _buffer(self, "rownorm", stage.rownorm_sq, 0)

    def forward(self, z: Tensor) -> Tensor:
        return F.relu(z) if self.kind == "relu" else F.gelu(z)

    def _derivative(self, z: Tensor) -> Tensor:
        return dreg.relu_derivative(z) if self.kind == "relu" else dreg.gelu_derivative(z)

    def tangent(self, z: Tensor, dz: Tensor) -> tuple[Tensor, Tensor]:
        return self(z), self._derivative(z) * dz

    def sensitivity(self, z: Tensor) -> Tensor:
        return _jacobian_sq(self._derivative(z), self.rownorm, self.positions)


def _jacobian_sq(deriv: Tensor, rownorm: Tensor, positions: str) -> Tensor:
    """``cr_edge.dreg.layer_jacobian_sq`` on the exported stages: a conv layer's term summed
    over its output positions, or their mean, as the net was trained."""
    sq = deriv * deriv
    if sq.dim() > 2:
        over = tuple(range(2, sq.dim()))
        sq = sq.mean(dim=over) if positions == "mean" else sq.sum(dim=over)
    return sq @ rownorm


def _body(stages: list[Stage]) -> tuple[list[Stage], bool]:
    """The stages before the ordinal head, and whether there is one."""
    if stages and isinstance(stages[-1], Cumulative):
        return stages[:-1], True
    return stages, False


def _sigmoid(c: Tensor) -> Tensor:
    """``1 / (1 + exp(-c))`` as Exp/Add/Reciprocal: onnxruntime's Sigmoid kernel is a fast
    approximation whose relative error reaches 1e-3 in the tails (c ~ -8), which ordinal
    probabilities there inherit; its Exp is accurate to float32 rounding."""
    return torch.reciprocal(1.0 + torch.exp(-c))


def _ordinal(logits: Tensor) -> tuple[Tensor, Tensor]:
    return ordinal_outputs(logits, _sigmoid)


def _ordinal_tangent(logits: Tensor, dlogits: Tensor) -> tuple[Tensor, Tensor]:
    """``P(y = k)`` and its tangent: ``d sigmoid(c) = sigmoid(c) sigmoid(-c) dc`` (exact where
    ``1 - sigmoid(c)`` would cancel), differenced like ``P``."""
    probs, _ = _ordinal(logits)
    ds = _sigmoid(logits) * _sigmoid(-logits) * dlogits
    zero = torch.zeros_like(ds[:, :1])
    padded = torch.cat([zero, ds, zero], dim=1)
    return probs, padded[:, :-1] - padded[:, 1:]


def _modules(stages: list[Stage]) -> nn.ModuleList:
    out, spatial = [], 0
    for stage in stages:
        if isinstance(stage, Affine):
            out.append(_Affine(stage))
            spatial = stage.spatial_dims
        elif isinstance(stage, MeanEmbed):
            out.append(_MeanEmbed(stage))
        elif isinstance(stage, InputAffine):
            # per-channel (C,) before a conv; per-feature, already in the sample's shape, else
            first = next(s for s in stages if isinstance(s, Affine))
            out.append(_InputAffine(stage, first.spatial_dims))
        elif isinstance(stage, Poly):
            out.append(_Poly(stage, spatial))
        elif isinstance(stage, Act):
            out.append(_Act(stage))
        else:
            out.append(_Linear(stage))
            spatial = spatial if isinstance(stage, Pool) else 0
    return nn.ModuleList(out)


class PrimalNet(nn.Module):
    """The shipped model: ``x -> y`` (and the per-sample DREG sensitivity with ``sensitivity``)."""

    def __init__(self, stages: list[Stage], sensitivity: bool = False) -> None:
        super().__init__()
        body, self.ordinal = _body(stages)
        self.layers = _modules(body)
        self.with_sensitivity = sensitivity

    def forward(self, x: Tensor) -> Tensor | tuple[Tensor, ...]:
        """``y``; ordinal nets return ``(probabilities, rank)``; ``sensitivity`` comes last."""
        sens = None
        for layer in self.layers:
            if self.with_sensitivity and isinstance(layer, _Poly | _Act):
                term = layer.sensitivity(x)
                sens = term if sens is None else sens + term
            x = layer(x)
        outputs = _ordinal(x) if self.ordinal else (x,)
        if self.with_sensitivity:
            outputs = (*outputs, sens)
        return outputs if len(outputs) > 1 else outputs[0]


class JvpNet(nn.Module):
    """The derivative companion: ``(x, v) -> (y, J(x) v)`` in forward mode."""

    def __init__(self, stages: list[Stage]) -> None:
        super().__init__()
        body, self.ordinal = _body(stages)
        self.layers = _modules(body)

    def forward(self, x: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Ordinal nets: ``y`` is the class probabilities and ``jvp`` their tangent."""
        for layer in self.layers:
            x, v = layer.tangent(x, v)
        return _ordinal_tangent(x, v) if self.ordinal else (x, v)
