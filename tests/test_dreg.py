"""DREG against autograd's own Jacobians, its gradients, its effect on training, its metrics."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cr_edge import dreg
from cr_edge.nets import ClosedFormAct, NetConfig, build_net, is_activation
from cr_edge.poly import PolyAct

F64 = torch.float64
TIGHT = {"rtol": 1e-12, "atol": 1e-12}


def _one_sample(layer: nn.Module, act: nn.Module) -> Callable[[Tensor], Tensor]:
    """``h -> act(layer(h))`` for one sample (no batch axis), the map DREG differentiates."""
    return lambda v: act(layer(v.unsqueeze(0))).squeeze(0)


def _exact_jacobian_sq(layer: nn.Module, act: nn.Module, h: Tensor) -> Tensor:
    """``||J||_F^2`` of ``h -> act(layer(h))`` per sample, from autograd's full Jacobian."""
    fn = _one_sample(layer, act)
    return torch.stack([torch.autograd.functional.jacobian(fn, v).pow(2).sum() for v in h])


def _analytic(layer: nn.Module, act: nn.Module, h: Tensor) -> Tensor:
    _, deriv = act.forward_with_derivative(layer(h))
    return dreg.layer_jacobian_sq(deriv, layer)


def _activation(kind: str, channels: int) -> nn.Module:
    if kind == "poly":
        return PolyAct(channels, degree=3).double()
    if kind == "poly-shared":
        return PolyAct(channels, degree=5, shared=True).double()
    return ClosedFormAct(kind)


ACTS = ["poly", "poly-shared", "relu", "gelu"]


@pytest.mark.parametrize("kind", ACTS)
def test_linear_term_equals_autograd_jacobian(kind: str) -> None:
    torch.manual_seed(0)
    layer = nn.Linear(5, 4).double()
    h = torch.randn(6, 5, dtype=F64)  # continuous inputs: no z lands exactly on ReLU's kink
    torch.testing.assert_close(
        _analytic(layer, _activation(kind, 4), h),
        _exact_jacobian_sq(layer, _activation(kind, 4), h),
        **TIGHT,
    )


# (conv layer, one input batch shape): Conv1d on sequences (n, c, length), Conv2d on images
CONVS = [(nn.Conv1d, (2, 2, 7)), (nn.Conv2d, (2, 2, 5, 4))]
CONV_IDS = ["conv1d", "conv2d"]


@pytest.mark.parametrize(("conv", "shape"), CONVS, ids=CONV_IDS)
@pytest.mark.parametrize("kind", ACTS)
def test_conv_term_equals_autograd_jacobian_without_padding(kind: str, conv, shape) -> None:
    torch.manual_seed(1)
    layer = conv(2, 3, kernel_size=3, padding=0).double()
    act = _activation(kind, 3)
    h = torch.randn(*shape, dtype=F64)
    torch.testing.assert_close(_analytic(layer, act, h), _exact_jacobian_sq(layer, act, h), **TIGHT)


@pytest.mark.parametrize(("conv", "shape"), CONVS, ids=CONV_IDS)
@pytest.mark.parametrize("kind", ACTS)
def test_conv_term_bounds_autograd_jacobian_with_padding(kind: str, conv, shape) -> None:
    """At the zero-padded border some taps fall outside the input: DREG overestimates there."""
    torch.manual_seed(2)
    layer = conv(2, 3, kernel_size=3, padding=1).double()
    act = _activation(kind, 3)
    h = torch.randn(*shape, dtype=F64)
    analytic, exact = _analytic(layer, act, h), _exact_jacobian_sq(layer, act, h)
    assert torch.all(analytic > exact)
    assert torch.all(analytic < 2.0 * exact)  # a bound, not a different quantity


def _small_net() -> nn.Module:
    return build_net(NetConfig(input_shape=(6,), hidden=(5, 4), n_classes=3), seed=0).double()


def test_dreg_gradient_reaches_coefficients_and_weights() -> None:
    net = _small_net()
    x = torch.randn(8, 6, dtype=F64, generator=torch.Generator().manual_seed(3))
    _, terms = net.forward_with_jacobians(x)
    dreg.penalty(terms).backward()
    blocks = list(net.blocks)
    for i, block in enumerate(blocks):
        if isinstance(block, PolyAct):
            assert block.coeffs.grad.abs().sum() > 0
        elif isinstance(block, nn.Linear) and i + 1 < len(blocks):
            assert block.weight.grad.abs().sum() > 0
    assert blocks[-1].weight.grad is None  # the logits layer has no activation, no DREG term


def test_dreg_gradient_equals_gradient_of_exact_jacobian_norm() -> None:
    """The closed form is differentiated through p'(z): its gradient must be autograd's too."""
    net = _small_net()
    x = torch.randn(8, 6, dtype=F64, generator=torch.Generator().manual_seed(4))
    params = list(net.parameters())
    _, terms = net.forward_with_jacobians(x)
    analytic = torch.autograd.grad(dreg.penalty(terms), params, allow_unused=True)
    exact_terms, h = [], x
    blocks = list(net.blocks)
    for i, block in enumerate(blocks):
        if i + 1 < len(blocks) and is_activation(blocks[i + 1]):
            jac = torch.func.vmap(torch.func.jacrev(_one_sample(block, blocks[i + 1])))(h)
            exact_terms.append(jac.pow(2).sum(dim=(1, 2)))
        h = block(h)
    exact = torch.autograd.grad(dreg.penalty(exact_terms), params, allow_unused=True)
    for a, e in zip(analytic, exact, strict=True):
        if e is None:
            assert a is None
        else:
            torch.testing.assert_close(a, e, **TIGHT)


def test_penalty_is_lambda_times_sum_of_batch_means() -> None:
    terms = [torch.tensor([1.0, 3.0]), torch.tensor([2.0, 6.0])]
    assert math.isclose(dreg.penalty(terms, dreg_lambda=0.5).item(), 0.5 * (2.0 + 4.0))
    assert math.isclose(dreg.penalty(terms).item(), dreg.DEFAULT_LAMBDA * 6.0, rel_tol=1e-6)
    uneven = [torch.tensor([1.0, 3.0]), torch.tensor([2.0, 4.0, 6.0])]
    assert math.isclose(dreg.penalty(uneven, dreg_lambda=1.0).item(), 2.0 + 4.0)
    with pytest.raises(ValueError, match="at least one"):
        dreg.penalty([])


@pytest.mark.parametrize("kind", ["relu", "gelu"])
def test_closed_form_derivatives_match_autograd(kind: str) -> None:
    z = torch.linspace(-4.0, 4.0, 801, dtype=F64).requires_grad_(True)
    fn, deriv = (F.relu, dreg.relu_derivative) if kind == "relu" else (F.gelu, dreg.gelu_derivative)
    (expected,) = torch.autograd.grad(fn(z).sum(), z)
    torch.testing.assert_close(deriv(z.detach()), expected, **TIGHT)


# ---- training -------------------------------------------------------------------------------


def _digits() -> tuple[Tensor, Tensor]:
    from sklearn.datasets import load_digits  # bundled with scikit-learn: no download

    data = load_digits()
    x = torch.tensor(data.data, dtype=torch.float32)
    x = (x - x.mean(dim=0)) / (x.std(dim=0) + 1e-6)
    return x, torch.tensor(data.target)


def _train(x: Tensor, y: Tensor, dreg_lambda: float, steps: int = 150) -> tuple[float, float]:
    """Train a CR MLP from seed 0; return its mean DREG sum over the data, and its accuracy."""
    net = build_net(NetConfig(input_shape=(64,), hidden=(32, 32), n_classes=10), seed=0)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    for _ in range(steps):
        idx = torch.randint(0, x.shape[0], (128,), generator=gen)
        logits, terms = net.forward_with_jacobians(x[idx])
        loss = F.cross_entropy(logits, y[idx])
        if dreg_lambda > 0:
            loss = loss + dreg.penalty(terms, dreg_lambda)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        logits, terms = net.forward_with_jacobians(x)
    accuracy = (logits.argmax(dim=1) == y).float().mean().item()
    return dreg.penalty(terms, dreg_lambda=1.0).item(), accuracy


def test_training_with_dreg_lowers_the_dreg_term() -> None:
    x, y = _digits()
    plain, plain_acc = _train(x, y, dreg_lambda=0.0)
    regular, regular_acc = _train(x, y, dreg_lambda=dreg.DEFAULT_LAMBDA)
    assert regular < 0.1 * plain  # measured: about 30 against 58,000
    assert min(plain_acc, regular_acc) > 0.9  # both nets learned; DREG did not just shrink them


# ---- gradient metrics -----------------------------------------------------------------------


def test_gradient_metrics_on_known_norms() -> None:
    g = torch.arange(1.0, 101.0)  # mean 50.5; p99 by linear interpolation: 99 + 0.01 * 1
    m = dreg.gradient_metrics(g)
    assert math.isclose(m["grad_mean"], 50.5)
    assert math.isclose(m["grad_p99"], 99.01)
    assert math.isclose(m["tail_ratio"], 99.01 / 50.5)
    assert m["peak_volatility"] == 100.0


def test_gradient_metrics_flat_and_heavy_tailed() -> None:
    flat = dreg.gradient_metrics(torch.full((50,), 2.0))
    assert math.isclose(flat["tail_ratio"], 1.0) and flat["peak_volatility"] == 2.0
    tail = dreg.gradient_metrics(torch.cat([torch.ones(98), torch.full((2,), 100.0)]))
    assert math.isclose(tail["grad_mean"], 2.98)  # 2% of samples at 100 put p99 at 100
    assert math.isclose(tail["tail_ratio"], 100.0 / 2.98)
    assert tail["peak_volatility"] == 100.0
    assert math.isnan(dreg.gradient_metrics(torch.zeros(10))["tail_ratio"])


def test_input_gradient_norms_of_a_linear_model() -> None:
    """For logits ``W x + b`` the gradient of the predicted logit is the row ``W[pred]``."""
    torch.manual_seed(5)
    model = nn.Linear(4, 3).double()
    x = torch.randn(7, 4, dtype=F64)
    pred = model(x).argmax(dim=1)
    expected = model.weight.detach()[pred].norm(dim=1)
    torch.testing.assert_close(dreg.input_gradient_norms(model, x, batch_size=3), expected)
