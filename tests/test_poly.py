"""The Polynomial Engine against trusted references: the power sum, autograd, GELU itself."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.autograd import gradcheck, gradgradcheck

from cr_edge.poly import (
    MAX_DEGREE,
    MIN_DEGREE,
    PolyAct,
    _EagerPolyFunction,
    _PolyFunction,
    check_degree,
    derivative_coeffs,
    fit_coefficients,
    horner,
    horner_with_derivative,
)

F64 = torch.float64
CASES = settings(max_examples=40, deadline=None)


def _random_case(seed: int, degree: int, conv: bool, shared: bool) -> tuple[torch.Tensor, ...]:
    """``x`` shaped (batch, C) or (batch, C, H, W), and coefficients shaped like ``PolyAct``'s."""
    gen = torch.Generator().manual_seed(seed)
    channels = 3
    shape = (4, channels, 3, 2) if conv else (5, channels)
    x = 1.5 * torch.randn(shape, generator=gen, dtype=F64)
    coeffs = torch.randn(degree + 1, 1 if shared else channels, generator=gen, dtype=F64)
    return x, coeffs


def _along_channels(coeffs: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``coeffs`` (K+1, C) viewed so that ``coeffs[k]`` broadcasts over ``x``'s axis 1."""
    return coeffs.view(*coeffs.shape, *([1] * (x.dim() - 2)))


def _power_sum(coeffs: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    a = _along_channels(coeffs, x)
    return sum(a[k] * x**k for k in range(a.shape[0]))


def _poly_act(coeffs: torch.Tensor, channels: int) -> PolyAct:
    act = PolyAct(channels, coeffs.shape[0] - 1, shared=coeffs.shape[1] == 1).double()
    with torch.no_grad():
        act.coeffs.copy_(coeffs)
    return act


cases = given(
    seed=st.integers(0, 2**31 - 1),
    degree=st.integers(MIN_DEGREE, MAX_DEGREE),
    conv=st.booleans(),
    shared=st.booleans(),
)


@CASES
@cases
def test_horner_equals_power_sum(seed: int, degree: int, conv: bool, shared: bool) -> None:
    x, coeffs = _random_case(seed, degree, conv, shared)
    expected = _power_sum(coeffs, x)
    a = _along_channels(coeffs, x)
    torch.testing.assert_close(horner(a, x), expected, rtol=1e-12, atol=1e-12)
    y, d = horner_with_derivative(a, x)
    torch.testing.assert_close(y, expected, rtol=1e-12, atol=1e-12)
    expected_d = _power_sum(derivative_coeffs(coeffs), x)
    torch.testing.assert_close(d, expected_d, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(_poly_act(coeffs, x.shape[1])(x), expected, rtol=1e-12, atol=1e-12)


@CASES
@cases
def test_forward_derivative_equals_autograd(
    seed: int, degree: int, conv: bool, shared: bool
) -> None:
    x, coeffs = _random_case(seed, degree, conv, shared)
    x.requires_grad_(True)
    y, d = _poly_act(coeffs, x.shape[1]).forward_with_derivative(x)
    (dy_dx,) = torch.autograd.grad(_power_sum(coeffs, x).sum(), x)  # elementwise: grad = p'
    torch.testing.assert_close(d, dy_dx, rtol=1e-12, atol=1e-12)
    assert y.shape == d.shape == x.shape


def test_degree_one_derivative_is_its_own_tensor() -> None:
    """p' = a[1] is constant; it must not come back as a broadcast view of the coefficients."""
    x, coeffs = _random_case(0, 1, conv=False, shared=False)
    _, d = horner_with_derivative(coeffs, x)
    d += 1.0  # would raise on an expanded view, or write into coeffs
    torch.testing.assert_close(d, (coeffs[1] + 1.0).expand_as(x))


# Which outputs a check differentiates: both, p only, p' only (the DREG path).
OUTPUTS = {"both": slice(0, 2), "p": 0, "dp": 1}
# The torch.func-capable Function and its eager twin share one forward and one backward.
FUNCTIONS = {"func": _PolyFunction, "eager": _EagerPolyFunction}


@pytest.mark.parametrize("function", sorted(FUNCTIONS))
@pytest.mark.parametrize("outputs", sorted(OUTPUTS))
@pytest.mark.parametrize("shared", [False, True])
@pytest.mark.parametrize("conv", [False, True])
@pytest.mark.parametrize("degree", [1, 2, 3, 5, 8])
def test_poly_function_gradients(
    degree: int, conv: bool, shared: bool, outputs: str, function: str
) -> None:
    """First and second derivatives of the outputs w.r.t. ``x`` and the coefficients."""
    x, coeffs = _random_case(degree, degree, conv, shared)
    # |x| <= 1.2 keeps x**8 moderate, so gradcheck's finite differences stay accurate.
    x = (1.2 * x / x.abs().max()).requires_grad_(True)
    coeffs.requires_grad_(True)
    apply, pick = FUNCTIONS[function].apply, OUTPUTS[outputs]

    def fn(x: torch.Tensor, a: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        return apply(x, a)[pick]

    assert gradcheck(fn, (x, coeffs))
    assert gradgradcheck(fn, (x, coeffs))


def test_poly_act_under_torch_func() -> None:
    """``vmap(jacrev(...))`` sees through ``_PolyFunction`` and agrees with autograd."""
    x, coeffs = _random_case(7, 4, conv=False, shared=False)
    act = _poly_act(coeffs, x.shape[1])
    jac = torch.func.vmap(torch.func.jacrev(lambda v: act(v.unsqueeze(0)).squeeze(0)))(x)
    _, d = act.forward_with_derivative(x)
    torch.testing.assert_close(jac, torch.diag_embed(d), rtol=1e-12, atol=1e-12)


# Max |PolyAct - GELU| on [-3, 3] for an untrained PolyAct (least-squares fit), as measured.
# GELU(x) - x/2 is even, so odd degrees gain nothing over the even degree below them.
GELU_FIT_ERROR = {1: 0.8285, 2: 0.2149, 3: 0.2149, 4: 0.07119, 6: 0.01989, 8: 0.004577}


@pytest.mark.parametrize("degree", sorted(GELU_FIT_ERROR))
def test_untrained_poly_act_is_close_to_gelu(degree: int) -> None:
    xs = torch.linspace(-3.0, 3.0, 6001)
    act = PolyAct(2, degree)
    with torch.no_grad():
        y = act(xs.view(-1, 1).expand(-1, 2).contiguous())
    err = (y - F.gelu(xs).view(-1, 1)).abs().max().item()
    assert err <= 1.05 * GELU_FIT_ERROR[degree] + 1e-5  # 5% margin, float32 evaluation
    assert err >= 0.9 * GELU_FIT_ERROR[degree]  # the table above is still the measured value


def test_fit_coefficients_starts_from_gelu_not_zero() -> None:
    coeffs = fit_coefficients("gelu", 3)
    assert coeffs.shape == (4,)
    assert math.isclose(coeffs[1], 0.5, abs_tol=1e-9)  # GELU's odd part is exactly x/2


@pytest.mark.parametrize("degree", [MIN_DEGREE - 1, MAX_DEGREE + 1, -3, 2.5])
def test_degree_out_of_range_raises(degree) -> None:
    with pytest.raises(ValueError, match="degree"):
        check_degree(degree)
    with pytest.raises(ValueError, match="degree"):
        PolyAct(4, degree)
    with pytest.raises(ValueError, match="degree"):
        fit_coefficients("gelu", degree)


def test_unknown_activation_to_fit_raises() -> None:
    with pytest.raises(ValueError, match="swish"):
        PolyAct(4, init="swish")
    with pytest.raises(ValueError, match="swish"):
        fit_coefficients("swish")


def test_wrong_channel_count_is_named() -> None:
    with pytest.raises(ValueError, match=r"channels=4.*\(2, 3\)"):
        PolyAct(4)(torch.zeros(2, 3))
    assert PolyAct(4, shared=True)(torch.zeros(2, 3)).shape == (2, 3)  # one polynomial fits all


def test_coeffs_parameter_shape() -> None:
    assert PolyAct(6, 3).coeffs.shape == (4, 6)
    assert PolyAct(6, 5, shared=True).coeffs.shape == (6, 1)
