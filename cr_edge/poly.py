"""The Polynomial Engine: learnable polynomial activations.

``PolyAct`` computes ``p(x) = sum_k a[k, c] x**k`` per channel ``c`` in Horner
form, and the derivative ``p'(x)`` in the same pass (Horner's scheme carries
the derivative along for one extra multiply-add per degree). DREG needs
``p'(z)`` at every layer, so getting it from the forward pass, instead of a
second traversal or autograd, is what keeps the penalty cheap.

The forward and backward passes are written as one ``autograd.Function``:
autograd would otherwise record every Horner step (two nodes per degree, for
``p`` and again for ``p'``) and replay them all in the backward pass.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor, nn

MIN_DEGREE, MAX_DEGREE = 1, 8
DEFAULT_DEGREE = 3
DEFAULT_FIT_RANGE = 3.0


def horner(coeffs: Tensor, x: Tensor) -> Tensor:
    """``sum_k coeffs[k] * x**k`` by Horner's rule; ``coeffs[k]`` broadcasts against ``x``."""
    y = coeffs[-1].expand_as(x)
    for k in range(coeffs.shape[0] - 2, -1, -1):
        y = y * x + coeffs[k]
    return y


def derivative_coeffs(coeffs: Tensor) -> Tensor:
    """Coefficients of ``p'``: ``k * a[k]`` for ``k >= 1`` (degree one lower)."""
    k = torch.arange(1, coeffs.shape[0], dtype=coeffs.dtype, device=coeffs.device)
    return coeffs[1:] * k.view(-1, *([1] * (coeffs.dim() - 1)))


def horner_with_derivative(coeffs: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
    """``(p(x), p'(x))`` together, by the simultaneous Horner scheme."""
    y = coeffs[-1].expand_as(x)
    d = torch.zeros_like(x)
    for k in range(coeffs.shape[0] - 2, -1, -1):
        d = d * x + y
        y = y * x + coeffs[k]
    return y, d


def fit_coefficients(fn: str = "gelu", degree: int = DEFAULT_DEGREE,
                     fit_range: float = DEFAULT_FIT_RANGE) -> np.ndarray:
    """Least-squares polynomial fit of a smooth activation on ``[-fit_range, fit_range]``.

    An untrained CR net then starts out behaving like the standard net it replaces.
    Returns ``a[0..degree]`` in ascending powers, float64.
    """
    check_degree(degree)
    xs = np.linspace(-fit_range, fit_range, 2001)
    ys = _SMOOTH[fn](xs)
    vander = np.vander(xs, degree + 1, increasing=True)
    coeffs, *_ = np.linalg.lstsq(vander, ys, rcond=None)
    return coeffs


def _gelu(x: np.ndarray) -> np.ndarray:
    erf = np.vectorize(math.erf)
    return 0.5 * x * (1.0 + erf(x / math.sqrt(2.0)))


_SMOOTH = {
    "gelu": _gelu,
    "silu": lambda x: x / (1.0 + np.exp(-x)),
    "tanh": np.tanh,
    "softplus": lambda x: np.log1p(np.exp(x)),
}


def check_degree(degree: int) -> None:
    if not MIN_DEGREE <= degree <= MAX_DEGREE:
        raise ValueError(f"degree must be in {MIN_DEGREE}..{MAX_DEGREE}, got {degree}")


class _PolyFunction(torch.autograd.Function):
    """``(p(x), p'(x))`` with a hand-written backward over both outputs.

    ``x`` is laid out with channels last, shape ``(M, C)``; ``coeffs`` is
    ``(K+1, C)`` or ``(K+1, 1)`` for shared coefficients.
    """

    @staticmethod
    def forward(ctx, x: Tensor, coeffs: Tensor) -> tuple[Tensor, Tensor]:
        y, d = horner_with_derivative(coeffs, x)
        ctx.save_for_backward(x, coeffs, d)
        ctx.set_materialize_grads(False)
        return y, d

    @staticmethod
    def backward(ctx, gy: Tensor | None, gd: Tensor | None):
        x, coeffs, d = ctx.saved_tensors
        degree = coeffs.shape[0] - 1
        gx = ga = None
        # powers[k] = x**k; the coefficient gradients are reductions against them.
        if ctx.needs_input_grad[1]:
            powers = [torch.ones_like(x), x]
            for _ in range(2, degree + 1):
                powers.append(powers[-1] * x)
            stacked = torch.stack(powers)
        if gy is not None:
            gx = gy * d
            if ctx.needs_input_grad[1]:
                ga = _reduce_like(stacked * gy, coeffs)
        if gd is not None:
            if degree >= 2:
                d2 = horner(derivative_coeffs(derivative_coeffs(coeffs)), x)
                gx = gd * d2 if gx is None else gx + gd * d2
            if ctx.needs_input_grad[1]:
                ks = torch.arange(1, degree + 1, dtype=x.dtype, device=x.device)
                gda = _reduce_like(stacked[:-1] * gd, coeffs[1:]) * ks.view(-1, 1)
                gda = torch.cat([torch.zeros_like(gda[:1]), gda])
                ga = gda if ga is None else ga + gda
        return gx, ga


def _reduce_like(t: Tensor, coeffs: Tensor) -> Tensor:
    # t is (K, M, C); sum over samples, and over channels too when coefficients are shared.
    out = t.sum(dim=1)
    return out.sum(dim=1, keepdim=True) if coeffs.shape[1] == 1 else out


class PolyAct(nn.Module):
    """Learnable polynomial activation ``p(x) = sum_k a[k, c] x**k``, channel axis 1.

    ``shared=True`` uses one polynomial for every channel. Coefficients start as a
    least-squares fit of ``init`` (GELU by default) on ``[-fit_range, fit_range]``.
    """

    def __init__(self, channels: int, degree: int = DEFAULT_DEGREE, shared: bool = False,
                 init: str = "gelu", fit_range: float = DEFAULT_FIT_RANGE) -> None:
        super().__init__()
        check_degree(degree)
        if init not in _SMOOTH:
            raise ValueError(f"init must be one of {sorted(_SMOOTH)}, got {init!r}")
        self.channels, self.degree, self.shared = channels, degree, shared
        fit = torch.tensor(fit_coefficients(init, degree, fit_range), dtype=torch.float32)
        width = 1 if shared else channels
        self.coeffs = nn.Parameter(fit.view(-1, 1).repeat(1, width))

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_with_derivative(x)[0]

    def forward_with_derivative(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(p(x), p'(x))`` from one Horner pass."""
        flat = _channels_last(x)
        y, d = _PolyFunction.apply(flat, self.coeffs)
        return _restore(y, x), _restore(d, x)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, degree={self.degree}, shared={self.shared}"


def _channels_last(x: Tensor) -> Tensor:
    if x.dim() == 2:
        return x
    return x.movedim(1, -1).reshape(-1, x.shape[1])


def _restore(t: Tensor, like: Tensor) -> Tensor:
    if like.dim() == 2:
        return t
    moved = (like.shape[0], *like.shape[2:], like.shape[1])
    return t.reshape(moved).movedim(-1, 1)
