"""Task heads: what the last layer means, its loss, and the predictions metrics are taken on.

* ``classify``: K logits, cross-entropy.
* ``regress``: one value in normalised target units (the target is standardised on the
  training split so one learning rate fits any scale); MSE or Huber. The exported graph
  multiplies by the target's std and adds its mean.
* ``ordinal``: CORAL (Cao, Mirjalili & Raschka 2020): one shared score ``s`` and K-1
  thresholds, cumulative logits ``s + b_k`` for ``P(y > k)``, binary cross-entropy on each.
  The thresholds are parametrised as ``b_0 - cumsum(softplus(gaps))``, strictly
  decreasing, so ``P(y > k)`` falls with ``k`` for every input: rank consistency holds by
  construction, not only at the optimum, and the class probabilities are never negative.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

LOSSES = {"classify": ("cross-entropy",), "regress": ("mse", "huber"), "ordinal": ("coral",)}


class OrdinalThresholds(nn.Module):
    """``s (batch, 1) -> s + b (batch, K-1)`` with decreasing thresholds ``b``."""

    def __init__(self, n_classes: int) -> None:
        super().__init__()
        if n_classes < 2:
            raise ValueError(f"an ordinal head needs at least 2 classes, got {n_classes}")
        # Thresholds start evenly spread over [-1, 1]: every class reachable from the start.
        step = 2.0 / max(n_classes - 2, 1)
        self.first = nn.Parameter(torch.ones(1))
        self.gaps = nn.Parameter(torch.full((n_classes - 2,), step).expm1().log())

    def thresholds(self) -> Tensor:
        steps = F.softplus(self.gaps)
        return torch.cat([self.first, self.first - torch.cumsum(steps, 0)])

    def forward(self, score: Tensor) -> Tensor:
        return score + self.thresholds()


def default_loss(task: str) -> str:
    return LOSSES[task][0]


def loss(task: str, kind: str, out: Tensor, target: Tensor) -> Tensor:
    """The training loss; ``target`` holds class indices, or normalised values for regress."""
    if task == "classify":
        return F.cross_entropy(out, target)
    if task == "regress":
        pred = out[:, 0]
        return F.huber_loss(pred, target) if kind == "huber" else F.mse_loss(pred, target)
    levels = torch.arange(out.shape[1], device=out.device)
    above = (target[:, None] > levels).to(out.dtype)
    return F.binary_cross_entropy_with_logits(out, above)


def predictions(task: str, out: Tensor) -> Tensor:
    """Class indices, or normalised values: the ordinal class is how many ``P(y > k)`` exceed
    one half, the median of the predicted distribution (what minimises the expected MAE)."""
    if task == "classify":
        return out.argmax(dim=1)
    if task == "regress":
        return out[:, 0]
    return (out > 0).sum(dim=1)


def ordinal_outputs(
    cumulative_logits: Tensor, sigmoid: Callable[[Tensor], Tensor] = torch.sigmoid
) -> tuple[Tensor, Tensor]:
    """Class probabilities ``P(y = k)`` (batch, K) and the expected rank ``sum_k P(y > k)``."""
    above = sigmoid(cumulative_logits)
    ones = torch.ones_like(above[:, :1])
    padded = torch.cat([ones, above, torch.zeros_like(ones)], dim=1)
    probs = padded[:, :-1] - padded[:, 1:]
    return probs, above.sum(dim=1, keepdim=True)
