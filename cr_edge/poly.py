"""The Polynomial Engine: learnable polynomial activations.

``PolyAct`` computes ``p(x) = sum_k a[k, c] x**k`` per channel ``c`` in Horner
form, and the derivative ``p'(x)`` in the same pass (Horner's scheme carries
the derivative along for one extra multiply-add per degree). DREG needs
``p'(z)`` at every layer, so getting it from the forward pass, instead of a
second traversal or autograd, is what keeps the penalty cheap.

The forward and backward passes are written as one ``autograd.Function``:
autograd would otherwise record every Horner step (two nodes per degree, for
``p`` and again for ``p'``) and replay them all in the backward pass.

Two parametrisations (``FORMS``). ``monomial`` learns ``a[k]`` of ``z**k``. ``depressed``
learns a shift ``s`` and the coefficients of ``P(u)``, ``u = z + s``, with the ``u**(n-1)``
term held at zero: the form export lowers to (``s`` goes into the previous layer's bias, the
leading coefficient into the next layer's weights, the constant into its bias), so a
degree-``n`` chain costs ``2n - 3`` elementwise nodes by construction, and no shift has to be
derived, or refused, from trained coefficients at export.
"""

from __future__ import annotations

import math
import numbers

import numpy as np
import torch
from scipy.optimize import minimize_scalar
from torch import Tensor, nn

MIN_DEGREE, MAX_DEGREE = 1, 8
DEFAULT_DEGREE = 3
DEFAULT_FIT_RANGE = 3.0
FORMS = ("monomial", "depressed")
DEFAULT_FORM = "depressed"
# How far the depressed fit may place its centre -s, in fit ranges. GELU (and SiLU, softplus)
# minus a line is nearly even, so their best degree-3 depressed fit runs off to an infinite
# shift (a parabola); the centre is kept on the fitted interval instead, where export's
# symmetric Clip guard needs it (cr_edge.export.folds.centred_range_guard).
MAX_INIT_SHIFT = 1.0


def horner(coeffs: Tensor, x: Tensor) -> Tensor:
    """``sum_k coeffs[k] * x**k`` by Horner's rule; ``coeffs[k]`` broadcasts against ``x``.

    Each step is one fused ``addcmul`` rather than a multiply and an add: half the kernels,
    and the polynomial is small enough that launching kernels is most of its cost.
    """
    y = coeffs[-1].expand_as(x)
    for k in range(coeffs.shape[0] - 2, -1, -1):
        y = torch.addcmul(coeffs[k], y, x)
    return y


def derivative_coeffs(coeffs: Tensor) -> Tensor:
    """Coefficients of ``p'``: ``k * a[k]`` for ``k >= 1`` (degree one lower)."""
    k = torch.arange(1, coeffs.shape[0], dtype=coeffs.dtype, device=coeffs.device)
    return coeffs[1:] * k.view(-1, *([1] * (coeffs.dim() - 1)))


def horner_with_derivative(coeffs: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
    """``(p(x), p'(x))`` together, by the simultaneous Horner scheme.

    ``p'`` trails ``p`` by one step (``d <- d*x + y`` before ``y <- y*x + a[k]``); it starts
    at the leading coefficient, so there is no zero tensor to allocate and multiply.
    """
    y = coeffs[-1].expand_as(x)
    d = None
    for k in range(coeffs.shape[0] - 2, -1, -1):
        d = y if d is None else torch.addcmul(y, d, x)
        y = torch.addcmul(coeffs[k], y, x)
    if coeffs.shape[0] == 2:  # p' = a[1] is still a broadcast view of coeffs: hand back a copy
        d = d.clone()
    return y, d


def fit_coefficients(
    fn: str = "gelu", degree: int = DEFAULT_DEGREE, fit_range: float = DEFAULT_FIT_RANGE
) -> np.ndarray:
    """Least-squares polynomial fit of a smooth activation on ``[-fit_range, fit_range]``.

    An untrained CR net then starts out behaving like the standard net it replaces.
    Returns ``a[0..degree]`` in ascending powers, float64.
    """
    check_degree(degree)
    xs = np.linspace(-fit_range, fit_range, 2001)
    ys = _smooth(fn)(xs)
    vander = np.vander(xs, degree + 1, increasing=True)
    coeffs, *_ = np.linalg.lstsq(vander, ys, rcond=None)
    return coeffs


def fit_depressed(
    fn: str = "gelu", degree: int = DEFAULT_DEGREE, fit_range: float = DEFAULT_FIT_RANGE
) -> tuple[float, np.ndarray]:
    """Least-squares fit of ``P(z + s)`` with no ``u**(n-1)`` term; returns ``(s, P)``.

    For each ``s`` the fit is linear in ``P``; ``s`` itself is searched on a grid over
    ``|s| <= MAX_INIT_SHIFT * fit_range`` and refined between the grid's neighbours, so the fit
    is the monomial one wherever the optimum lies inside, and otherwise the best one with its
    centre on the interval. Degree 1 has no term to
    remove: ``s = 0`` and the monomial fit.
    """
    check_degree(degree)
    if degree == 1:
        return 0.0, fit_coefficients(fn, degree, fit_range)
    xs = np.linspace(-fit_range, fit_range, 2001)
    ys = _smooth(fn)(xs)
    powers = [k for k in range(degree + 1) if k != degree - 1]

    def fit(s: float) -> tuple[float, np.ndarray]:
        basis = np.stack([(xs + s) ** k for k in powers], axis=1)
        sol, *_ = np.linalg.lstsq(basis, ys, rcond=None)
        return float(np.sum((basis @ sol - ys) ** 2)), sol

    limit = MAX_INIT_SHIFT * fit_range
    grid = np.linspace(-limit, limit, 121)
    start = grid[int(np.argmin([fit(s)[0] for s in grid]))]
    step = grid[1] - grid[0]
    bounds = (max(start - step, -limit), min(start + step, limit))
    shift = float(minimize_scalar(lambda s: fit(s)[0], bounds=bounds, method="bounded").x)
    coeffs = np.zeros(degree + 1)
    coeffs[powers] = fit(shift)[1]
    return shift, coeffs


def _smooth(fn: str):
    if fn not in _SMOOTH:
        raise ValueError(f"fn must be one of {sorted(_SMOOTH)}, got {fn!r}")
    return _SMOOTH[fn]


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
    """Refuse degrees the engine does not support, before any tensor is built."""
    if not isinstance(degree, numbers.Integral) or not MIN_DEGREE <= degree <= MAX_DEGREE:
        raise ValueError(f"degree must be an integer in {MIN_DEGREE}..{MAX_DEGREE}, got {degree!r}")


class _PolyFunction(torch.autograd.Function):
    """``(p(x), p'(x))`` with a hand-written backward over both outputs.

    ``x`` is ``(batch, C, ...)`` with channels on axis 1, in whatever layout it comes; ``coeffs``
    is ``(K+1, C)``, or ``(K+1, 1)`` for shared coefficients. The backward is built from
    differentiable ops, so double backward (an input-gradient penalty) works too, and
    ``setup_context`` plus ``generate_vmap_rule`` let ``torch.func`` transforms (``vmap``,
    ``jacrev``) see through it.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(x: Tensor, coeffs: Tensor) -> tuple[Tensor, Tensor]:
        return horner_with_derivative(_broadcastable(coeffs, x), x)

    @staticmethod
    def setup_context(ctx, inputs: tuple[Tensor, Tensor], output: tuple[Tensor, Tensor]) -> None:
        x, coeffs = inputs
        ctx.save_for_backward(x, coeffs, output[1])
        ctx.set_materialize_grads(False)

    @staticmethod
    def backward(ctx, gy: Tensor | None, gd: Tensor | None) -> tuple[Tensor | None, ...]:
        x, coeffs, d = ctx.saved_tensors
        a = _broadcastable(coeffs, x)
        gx = ga = None
        if ctx.needs_input_grad[0]:
            gx = _input_grad(a, x, d, gy, gd)
        if ctx.needs_input_grad[1]:
            ga = _coeff_grad(a, x, gy, gd).view(coeffs.shape)
        return gx, ga


class _EagerPolyFunction(torch.autograd.Function):
    """``_PolyFunction`` in the classic ``forward(ctx, ...)`` form, for calls outside ``torch.func``.

    ``Function.apply`` binds the arguments of a ``setup_context``-style function through
    ``inspect.signature`` on every call, which on an edge model's small tensors costs 5-10% of
    a whole training step. The math, and the backward, are ``_PolyFunction``'s own.
    """

    @staticmethod
    def forward(ctx, x: Tensor, coeffs: Tensor) -> tuple[Tensor, Tensor]:
        out = _PolyFunction.forward(x, coeffs)
        _PolyFunction.setup_context(ctx, (x, coeffs), out)
        return out

    backward = staticmethod(_PolyFunction.backward)


def _apply(x: Tensor, coeffs: Tensor) -> tuple[Tensor, Tensor]:
    """``(p(x), p'(x))`` through whichever Function the current mode can run."""
    # torch's own Function.apply asks the same question to route functorch transforms.
    if torch._C._are_functorch_transforms_active():
        return _PolyFunction.apply(x, coeffs)
    return _EagerPolyFunction.apply(x, coeffs)


def _broadcastable(coeffs: Tensor, x: Tensor) -> Tensor:
    """``coeffs`` as ``(K+1, C, 1, ...)``, so ``coeffs[k]`` broadcasts over ``x``'s axis 1.

    Working in ``x``'s own layout spares a channels-last copy on the way in and on the way out.
    """
    if x.dim() == 2:  # already broadcastable, and even a no-op view costs a dispatch
        return coeffs
    return coeffs.view(*coeffs.shape, *([1] * (x.dim() - 2)))


def _input_grad(
    a: Tensor, x: Tensor, d: Tensor, gy: Tensor | None, gd: Tensor | None
) -> Tensor | None:
    """``gy * p'(x) + gd * p''(x)``; ``p''`` only when DREG backpropagates through ``p'``."""
    gx = None if gy is None else gy * d
    if gd is None or a.shape[0] < 3:  # no gradient into p', or p' is constant
        return gx
    half = _half_second_derivative(a, x)
    return gd * half * 2.0 if gx is None else torch.addcmul(gx, gd, half, value=2.0)


def _half_second_derivative(a: Tensor, x: Tensor) -> Tensor:
    """``p''(x) / 2``, by Horner on the coefficients themselves.

    ``p''(x) = sum_k k(k-1) a[k] x**(k-2)``. Writing each Horner partial as ``k(k-1) u_k``
    gives ``u_k = a[k] + (k+1)/(k-1) * u_{k+1} * x``, one ``addcmul`` with a scalar weight per
    step, and ``p'' = 2 u_2``: no scaled copy of the coefficients is built in the backward pass.
    """
    u = a[-1]  # broadcasts in addcmul; at degree 2 the caller's addcmul broadcasts it
    for k in range(a.shape[0] - 2, 1, -1):
        u = torch.addcmul(a[k], u, x, value=(k + 1) / (k - 1))
    return u


def _coeff_grad(a: Tensor, x: Tensor, gy: Tensor | None, gd: Tensor | None) -> Tensor:
    """``d loss / d a[k] = sum(gy * x**k + k * gd * x**(k-1))``, as ``(K+1, C)`` or ``(K+1,)``.

    The summands come from one recurrence, ``s_k = s_{k-1} * x + t_{k-1}`` with
    ``t_k = gd * x**k``, and each is reduced as soon as it exists: no tensor of powers, and no
    stacked ``(K+1, *x.shape)`` temporary, which on CPU costs more to allocate than to sum.
    """
    # Reduce every axis but the channel axis, or every axis for shared coefficients.
    dims = tuple(i for i in range(x.dim()) if i != 1 or a.shape[1] == 1)
    s = torch.zeros_like(x) if gy is None else gy
    t = gd
    sums = [s.sum(dim=dims)]
    for k in range(1, a.shape[0]):
        s = s * x if t is None else torch.addcmul(t, s, x)
        if t is not None and k < a.shape[0] - 1:
            t = t * x
        sums.append(s.sum(dim=dims))
    return torch.stack(sums)


class PolyAct(nn.Module):
    """Learnable polynomial activation, one polynomial per channel (axis 1) or ``shared``.

    ``form="monomial"``: ``p(z) = sum_k coeffs[k] z**k``. ``form="depressed"``:
    ``p(z) = sum_j coeffs[j] (z + shift)**powers[j]``, ``powers`` skipping ``degree - 1``, so
    the parameters are exactly the form's degrees of freedom (as many as the monomial's).
    Either starts as a least-squares fit of ``init`` (GELU by default) on
    ``[-fit_range, fit_range]``.
    """

    def __init__(
        self,
        channels: int,
        degree: int = DEFAULT_DEGREE,
        shared: bool = False,
        init: str = "gelu",
        fit_range: float = DEFAULT_FIT_RANGE,
        form: str = "monomial",
    ) -> None:
        super().__init__()
        check_degree(degree)
        if init not in _SMOOTH:
            raise ValueError(f"init must be one of {sorted(_SMOOTH)}, got {init!r}")
        if form not in FORMS:
            raise ValueError(f"form must be one of {FORMS}, got {form!r}")
        self.channels, self.degree, self.shared = channels, degree, shared
        self.form = "depressed" if form == "depressed" and degree >= 2 else "monomial"
        width = 1 if shared else channels
        self.powers = tuple(
            k for k in range(degree + 1) if self.form == "monomial" or k != degree - 1
        )
        if self.form == "depressed":
            shift, fit = fit_depressed(init, degree, fit_range)
            self.shift = nn.Parameter(torch.full((width,), shift))
        else:
            fit = fit_coefficients(init, degree, fit_range)
        fit = torch.tensor(fit[list(self.powers)], dtype=torch.float32)
        self.coeffs = nn.Parameter(fit.view(-1, 1).repeat(1, width))

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_with_derivative(x)[0]

    def forward_with_derivative(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(p(x), p'(x))`` from one Horner pass (in ``u = x + shift`` when depressed)."""
        if x.dim() < 2 or not (self.shared or x.shape[1] == self.channels):
            raise ValueError(
                f"PolyAct(channels={self.channels}) needs input shaped "
                f"(batch, {self.channels}, ...), got {tuple(x.shape)}"
            )
        if self.form == "monomial":
            return _apply(x, self.coeffs)
        shift = self.shift if x.dim() == 2 else self.shift.view(-1, *([1] * (x.dim() - 2)))
        return _apply(x + shift, self._full(self.coeffs))

    def _full(self, coeffs: Tensor) -> Tensor:
        """All ``degree + 1`` rows, the one the depressed form leaves out as zeros."""
        if self.form == "monomial":
            return coeffs
        n = self.degree
        return torch.cat([coeffs[: n - 1], coeffs.new_zeros(1, coeffs.shape[1]), coeffs[n - 1 :]])

    def centred(self) -> np.ndarray:
        """The coefficients in powers of ``z + shift`` (float64, ``(degree + 1, width)``)."""
        return self._full(self.coeffs.detach().cpu().double()).numpy()

    def monomial(self) -> np.ndarray:
        """The coefficients of ``p`` in powers of ``z`` (float64, ``(degree + 1, width)``)."""
        return substitute(self.centred(), self.shift_values())

    def shift_values(self) -> np.ndarray:
        """``s`` per channel (float64); zeros for the monomial form."""
        if self.form == "monomial":
            return np.zeros(self.coeffs.shape[1])
        return self.shift.detach().cpu().double().numpy()

    def extra_repr(self) -> str:
        return (
            f"channels={self.channels}, degree={self.degree}, shared={self.shared}, "
            f"form={self.form}"
        )


def substitute(
    a: np.ndarray, offset: np.ndarray | float, factor: np.ndarray | float = 1.0
) -> np.ndarray:
    """Coefficients of ``t -> p(offset + factor * t)`` per channel (columns of ``a``), float64."""
    n = a.shape[0] - 1
    q = np.zeros(a.shape, dtype=np.float64)
    for j in range(n + 1):
        for k in range(j, n + 1):
            q[j] += a[k] * math.comb(k, j) * offset ** (k - j)
        q[j] *= factor**j
    return q
