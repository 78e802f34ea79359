"""Smoothness metrics the Fair Fight reports, each a scale-free ratio of gradient norms.

The papers' "tail ratio" tau = p99 / mean of a set of gradient norms; which set decides what
it can reach. Over per-sample input gradients ``||d logit / dx||`` even logistic regression
on MNIST-1D scores 1.85-1.91 (samples differ in scale), so 1.01 is out of reach by
construction. Three readings are measured, so the report can say which one reproduces the
published 1.07-1.09:

* ``per_sample``: tau and peak volatility over the test samples' input-gradient norms.
* ``batch``: over training steps, the mini-batch *mean* input-gradient norm (one value a
  step); averaging over the batch removes the per-sample spread.
* ``test_batch``: the trained net's per-sample norms on the test split, averaged over
  consecutive mini-batches of the training batch size: the batch reading without the drift
  of a norm that grows (or shrinks) while the net trains.
* ``step``: over training steps, the norm of the task loss's gradient with respect to
  the shared weights (every Linear/Conv ``W`` and ``b``) only: no polynomial coefficients
  (94-100% of a CR step's norm, and measured before their per-power update scaling), no
  DREG or range-penalty term (the baselines have none), so CR and baselines are compared on
  the parameters they share.

Peak volatility is ``max / median``: scale-free, unlike the raw maximum, which grows with
whatever sets the gradients' scale (width, normalisation, the logits' temperature).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor, nn

from cr_edge import heads
from cr_edge.nets import CRNet

TAIL_QUANTILE = 0.99
# Smoothness is sampled every this many optimiser steps: each sample costs one more forward
# and backward pass, and a quarter of the steps still gives hundreds of values per run.
SAMPLE_EVERY = 4


def tail_ratio(values: Sequence[float] | np.ndarray) -> float | None:
    """tau = p99 / mean (linear interpolation between order statistics, as ``np.quantile``
    and ``torch.quantile`` both default to); ``None`` when undefined (no values, mean <= 0)."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0 or not np.all(np.isfinite(v)) or v.mean() <= 0:
        return None
    return float(np.quantile(v, TAIL_QUANTILE) / v.mean())


def peak_volatility(values: Sequence[float] | np.ndarray) -> float | None:
    """max / median; ``None`` when undefined (no values, median <= 0)."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0 or not np.all(np.isfinite(v)) or np.median(v) <= 0:
        return None
    return float(v.max() / np.median(v))


def summary(prefix: str, values: Sequence[float] | np.ndarray) -> dict[str, float | None]:
    """``{prefix}_tail_ratio`` and ``{prefix}_peak_volatility`` of ``values``."""
    return {
        f"{prefix}_tail_ratio": tail_ratio(values),
        f"{prefix}_peak_volatility": peak_volatility(values),
    }


def batch_means(values: Sequence[float] | np.ndarray, size: int) -> np.ndarray:
    """Means of consecutive chunks of ``size`` values; a last, shorter chunk is dropped (it
    would be the noisiest value, and p99 reads the tail)."""
    v = np.asarray(values, dtype=np.float64)
    whole = (len(v) // size) * size
    return v[:whole].reshape(-1, size).mean(axis=1)


def shared_weights(net: nn.Module) -> list[Tensor]:
    """Every Linear/Conv weight and bias: what a CR net and its baseline twin both have."""
    out = []
    for m in net.modules():
        if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d)):
            out += [p for p in (m.weight, m.bias) if p is not None]
    return out


class StepProbe:
    """Collects, every ``every``-th training step and before the optimiser moves, the batch's
    mean input-gradient norm and the task loss's gradient norm over the shared weights.

    Pass ``probe`` as ``train(..., on_batch=probe)``. The net's own gradients are left
    untouched: both are taken with ``torch.autograd.grad`` on a separate forward pass.
    """

    def __init__(self, task: str, loss: str, every: int = SAMPLE_EVERY) -> None:
        self.task, self.loss, self.every = task, loss, every
        self.batch_norms: list[float] = []
        self.weight_norms: list[float] = []
        self._calls = 0

    def __call__(self, net: CRNet, xb: Tensor, yb: Tensor) -> None:
        self._calls += 1
        if (self._calls - 1) % self.every:
            return
        weights = shared_weights(net)
        x = xb.detach().clone().requires_grad_(True) if xb.is_floating_point() else xb
        out = net(x)
        task_loss = heads.loss(self.task, self.loss, out, yb)
        grads = torch.autograd.grad(task_loss, weights, retain_graph=x.requires_grad)
        self.weight_norms.append(float(torch.stack([g.norm() for g in grads]).norm()))
        if x.requires_grad:  # token ids have no input gradient
            self.batch_norms.append(float(input_gradient_norms(out, x).mean()))

    def metrics(self) -> dict[str, float | None]:
        """``batch_*`` and ``step_*`` tail ratio and peak volatility (the step over the shared
        weights, without DREG)."""
        return {**summary("batch", self.batch_norms), **summary("step", self.weight_norms)}


def input_gradient_norms(out: Tensor, x: Tensor) -> Tensor:
    """``||d out[i, pred_i] / d x_i||`` per sample, ``pred`` the net's own argmax (the
    definition ``cr_edge.dreg.input_gradient_norms`` uses), from an existing forward pass."""
    pred = out.argmax(dim=1, keepdim=True)
    (grad,) = torch.autograd.grad(out.gather(1, pred).sum(), x)
    return grad.flatten(1).norm(dim=1).detach()
