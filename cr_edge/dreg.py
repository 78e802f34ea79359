"""DREG: the layer-wise Jacobian penalty, and the gradient metrics it is judged by.

For a layer ``z = W h + b`` followed by ``h' = act(z)`` the layer Jacobian is
``J = diag(act'(z)) W``, so ``||J||_F^2 = sum_i act'(z_i)^2 ||W_i||^2``: the
activation's derivative (which PolyAct hands over from its forward pass) and
the row norms of ``W``. No double backward, no Jacobian is ever materialised.

For ``Conv1d`` and ``Conv2d`` alike each output position is a row of the unrolled
convolution; its norm is ``||W_o||^2`` whenever the whole kernel lies inside the
input. At a zero-padded border (the first and last positions of a padded Conv1d,
the frame of a padded Conv2d) some taps fall on padding, the true row norm is
smaller, and the value computed here is an upper bound of ``||J||_F^2`` rather
than equal to it.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

DEFAULT_LAMBDA = 10**-2.5
# How a conv layer's term reduces its output positions: "sum" (||J||_F^2 itself, what
# checkpoints from before the choice trained with) or "mean" (per position, the scale of a
# dense layer's term).
POSITIONS = ("mean", "sum")


def row_norms_sq(layer: nn.Module) -> Tensor:
    """``||W_i||^2`` per output unit (Linear) or output channel (Conv1d/Conv2d)."""
    w = layer.weight
    if w.dim() > 2:  # conv: one row per output channel; a Linear weight needs no reshape node
        w = w.flatten(1)
    return (w * w).sum(dim=1)


def layer_jacobian_sq(act_deriv: Tensor, layer: nn.Module, positions: str = "sum") -> Tensor:
    """Per-sample ``||J||_F^2`` of ``act(layer(h))`` with respect to ``h``; shape ``(batch,)``.

    ``act_deriv`` is ``act'(z)`` at the layer's output, shape ``(batch, out, ...)``. On the small
    tensors DREG sees, kernel launches cost more than arithmetic: ``t * t`` backpropagates
    without the extra ``pow`` kernel of ``t.pow(2)``, and ``mv`` weights all units in one call.
    ``positions`` (``POSITIONS``): a conv layer's term summed over its output positions (the
    Frobenius norm itself), or their mean, the term per position, which is on the scale of a
    dense layer's term so that one lambda fits MLP and conv nets alike.
    """
    sq = act_deriv * act_deriv
    if sq.dim() > 2:  # conv: reduce over positions first, then weight by channel
        sq = sq.flatten(2)
        sq = sq.mean(dim=2) if positions == "mean" else sq.sum(dim=2)
    return torch.mv(sq, row_norms_sq(layer))


def penalty(terms: list[Tensor], dreg_lambda: float = DEFAULT_LAMBDA) -> Tensor:
    """``dreg_lambda * sum_layers mean_batch ||J_l||_F^2``.

    When the terms share one shape (one batch, as ``forward_with_jacobians`` gives them), the
    sum of per-layer means is one sum over the stacked terms: three autograd nodes, however
    many layers, instead of a mean node per layer.
    """
    if not terms:
        raise ValueError("DREG needs at least one activated layer")
    if len({t.shape for t in terms}) == 1:
        stacked = torch.stack(terms)
        return stacked.sum() * (dreg_lambda * len(terms) / stacked.numel())
    return dreg_lambda * torch.stack([t.mean() for t in terms]).sum()


def relu_derivative(z: Tensor) -> Tensor:
    return (z > 0).to(z.dtype)


def gelu_derivative(z: Tensor) -> Tensor:
    """``d/dz z*Phi(z) = Phi(z) + z*phi(z)`` (exact GELU, not the tanh approximation)."""
    cdf = 0.5 * (1.0 + torch.erf(z / math.sqrt(2.0)))
    pdf = torch.exp(-0.5 * z * z) / math.sqrt(2.0 * math.pi)
    return cdf + z * pdf


# ---- gradient metrics -------------------------------------------------------


def input_gradient_norms(model: nn.Module, x: Tensor, batch_size: int = 512) -> Tensor:
    """``g(x) = ||d logit_pred / dx||`` per sample, where ``pred`` is the model's own argmax.

    Computed in batches on a copy of ``x``; the model's train/eval mode is left as it was
    by the caller (use eval mode for metrics).
    """
    out = []
    for start in range(0, x.shape[0], batch_size):
        xb = x[start : start + batch_size].detach().clone().requires_grad_(True)
        logits = model(xb)
        pred = logits.argmax(dim=1, keepdim=True)
        chosen = logits.gather(1, pred).sum()
        (grad,) = torch.autograd.grad(chosen, xb)
        out.append(grad.flatten(1).norm(dim=1))
    return torch.cat(out)


def gradient_metrics(norms: Tensor) -> dict[str, float]:
    """Tail ratio ``tau = p99(g) / mean(g)`` and peak volatility ``max(g)``."""
    g = norms.double()
    mean = g.mean().item()
    return {
        "grad_mean": mean,
        "grad_p99": torch.quantile(g, 0.99).item(),
        "tail_ratio": torch.quantile(g, 0.99).item() / mean if mean > 0 else float("nan"),
        "peak_volatility": g.max().item(),
    }
