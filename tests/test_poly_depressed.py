"""The depressed form, from training to the exported chain.

A net trained as ``p(z) = P(z + s)`` (no ``u**(n-1)`` term) must compute the polynomial it
claims, count as many parameters as the monomial form, and export as the chain it was
trained as: ``2n - 3`` Mul/Add nodes for every degree, with the shift folded as it is (never
refused), and with one Clip as its guard, outputs and derivatives matching the reference net.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch.autograd import gradcheck, gradgradcheck

from cr_edge.export import folds
from cr_edge.export.exporter import ExportOptions, export
from cr_edge.export.stages import Affine, Poly
from cr_edge.nets import CRNet, NetConfig
from cr_edge.poly import FORMS, PolyAct, fit_coefficients, fit_depressed, substitute
from cr_edge.recipe import Recipe
from cr_edge.train.loop import train

F64 = torch.float64


def _depressed(channels: int, degree: int, seed: int) -> PolyAct:
    act = PolyAct(channels, degree, form="depressed").double()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        act.coeffs.copy_(torch.randn(act.coeffs.shape, generator=gen, dtype=F64))
        act.shift.copy_(torch.randn(act.shift.shape, generator=gen, dtype=F64))
    return act


@pytest.mark.parametrize("degree", [2, 3, 4, 6])
def test_depressed_form_computes_the_shifted_power_sum_and_its_derivative(degree: int) -> None:
    act = _depressed(3, degree, seed=degree)
    x = 2.0 * torch.randn(7, 3, dtype=F64)
    y, d = act.forward_with_derivative(x)
    u = x + act.shift
    full = act.centred()
    assert np.all(full[degree - 1] == 0.0)
    expected = sum(torch.from_numpy(full[k]) * u**k for k in range(degree + 1))
    torch.testing.assert_close(y, expected, rtol=1e-12, atol=1e-12)
    xg = x.clone().requires_grad_()
    (grad,) = torch.autograd.grad(act(xg).sum(), xg)
    torch.testing.assert_close(d, grad, rtol=1e-12, atol=1e-12)
    mono = act.monomial()  # the same polynomial in powers of z
    from_z = sum(torch.from_numpy(mono[k]) * x**k for k in range(degree + 1))
    torch.testing.assert_close(from_z, y, rtol=1e-10, atol=1e-10)


def test_gradients_reach_the_shift_and_the_coefficients() -> None:
    act = _depressed(2, 3, seed=1)
    x = torch.randn(4, 2, dtype=F64, requires_grad=True)

    def both(x, coeffs, shift):
        params = {"coeffs": coeffs, "shift": shift}
        return torch.func.functional_call(act, params, (x,), strict=True)

    inputs = (
        x,
        act.coeffs.detach().clone().requires_grad_(),
        act.shift.detach().clone().requires_grad_(),
    )
    assert gradcheck(both, inputs)
    assert gradgradcheck(both, inputs)


@pytest.mark.parametrize("form", FORMS)
def test_both_forms_count_the_same_parameters(form: str) -> None:
    """The depressed form's shift replaces the coefficient it holds at zero."""
    base = CRNet(NetConfig(hidden=(16, 8), poly_form="monomial")).n_parameters()
    assert CRNet(NetConfig(hidden=(16, 8), poly_form=form)).n_parameters() == base


def test_depressed_fit_matches_the_monomial_fit_where_its_centre_is_free() -> None:
    xs = np.linspace(-3, 3, 2001)
    for fn, degree in (("gelu", 2), ("tanh", 3), ("tanh", 5)):
        s, centred = fit_depressed(fn, degree)
        mono = fit_coefficients(fn, degree)
        got = sum(centred[k] * (xs + s) ** k for k in range(degree + 1))
        np.testing.assert_allclose(got, np.polyval(mono[::-1], xs), atol=1e-6)
    s, _ = fit_depressed("gelu", 3)  # GELU's cubic fit has a_3 = 0: the centre stays in range
    assert abs(s) <= 3.0


def test_checkpoints_from_before_the_form_load_as_monomial() -> None:
    old = {k: v for k, v in NetConfig().to_json().items() if k != "poly_form"}
    assert NetConfig.from_json(old).poly_form == "monomial"


def _chain_ops(path: Path) -> dict[str, int]:
    counts: dict[str, int] = {}
    for node in onnx.load(path).graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


@pytest.fixture(scope="module")
def depressed_nets(tmp_path_factory) -> dict[tuple[str, int], Path]:
    root = tmp_path_factory.mktemp("depressed")
    nets = {}
    for arch, degree in (("mlp", 2), ("mlp", 3), ("mlp", 5), ("conv", 3)):
        hidden = (4, 8) if arch == "conv" else (16, 16)
        # constant rate: two epochs of the cosine default move the mlp-3 shifts less, and one
        # centre then starts outside its guard (3.67x, over 3x), which the mlp-3 case excludes
        recipe = Recipe(
            arch=arch,
            hidden=hidden,
            degree=degree,
            epochs=2,
            poly_form="depressed",
            lr_schedule="constant",
        )
        nets[arch, degree] = train(recipe, root / f"{arch}{degree}").checkpoint
    return nets


@pytest.mark.parametrize("arch, degree", [("mlp", 2), ("mlp", 3), ("mlp", 5), ("conv", 3)])
@pytest.mark.parametrize("guard", ["none", "minmax", "clip"])
def test_depressed_nets_export_as_2n_minus_3_nodes_and_match(
    depressed_nets, tmp_path: Path, arch: str, degree: int, guard: str
) -> None:
    options = ExportOptions(domain_guard=guard != "none", clip_guard=guard == "clip")
    result = export(depressed_nets[arch, degree], tmp_path / "out", options)
    # Before a zero-padded conv the constant keeps its Add; a chain whose centre lies far
    # outside its guard takes the unit-range Clip, which gives its u**(n-1) Add back. The
    # folds say so in both cases.
    kept = sum("constant term kept" in r for r in result.refusals)
    uncentred = sum("centred_range_guard" in r for r in result.refusals)
    expected = 2 * (2 * degree - 3) + kept + uncentred
    assert sum(result.horner_nodes) == expected, (result.horner_nodes, result.refusals)
    assert not any("shift_to_depressed" in r for r in result.refusals), result.refusals
    assert result.check is not None and result.check.passed  # outputs and derivatives vs torch
    ops = _chain_ops(result.files["onnx"])
    if guard == "clip":
        assert ops.get("Clip") == 2 and "Max" not in ops, ops
    if arch == "mlp" and degree == 3:  # trained on digits, both centres lie in their guards
        assert uncentred == 0, result.refusals


def _far_centre_stages() -> list:
    rng = np.random.default_rng(3)
    s = np.array([0.1, -0.2, 9.0])  # the third channel's centre, z = -9, lies far outside
    q = rng.normal(size=(4, 3))
    q[2] = 0.0
    lo, hi = np.full(3, -1.0), np.full(3, 1.5)
    z_coeffs = substitute(q, s)
    poly = Poly(z_coeffs, np.ones(3), lo=lo, hi=hi, guard=True, trained=(s, q))
    return [
        Affine(rng.normal(size=(3, 2)), rng.normal(size=3)),
        poly,
        Affine(rng.normal(size=(2, 3)), np.zeros(2)),
    ]


def _evaluate(stages: list, x: np.ndarray) -> np.ndarray:
    """The folded stages in float64 (``scale`` and the constant already sit in ``last``)."""
    first, poly, last = stages
    t = x @ first.weight.T + first.bias
    if poly.unit:
        t = np.clip(t, -1.0, 1.0)
    else:
        lo, hi = (poly.lo + poly.shift) * poly.gain, (poly.hi + poly.shift) * poly.gain
        t = np.clip(t, lo, hi)
    m = sum(
        np.broadcast_to(poly.coeffs, (poly.degree + 1, 3))[k] * t**k for k in range(poly.degree + 1)
    )
    return m @ last.weight.T + last.bias


def test_a_far_centre_takes_the_unit_clip_and_both_guards_agree_in_range() -> None:
    stages = _far_centre_stages()
    x = np.random.default_rng(0).normal(size=(50, 2)) * 0.3
    plain = folds.run_passes(copy.deepcopy(stages), folds.DEFAULT_PASSES)
    clip = folds.run_passes(copy.deepcopy(stages), folds.CLIP_GUARD_PASSES)
    assert any("centred_range_guard" in r for r in clip.refusals), clip.refusals
    assert clip.stages[1].unit and not clip.stages[1].shifted
    z = x @ stages[0].weight.T + stages[0].bias
    inside = np.all((z >= stages[1].lo) & (z <= stages[1].hi), axis=1)
    assert inside.sum() > 10
    np.testing.assert_allclose(
        _evaluate(clip.stages, x)[inside], _evaluate(plain.stages, x)[inside], rtol=1e-9, atol=1e-9
    )
    # and the comparison can fail: dropping the trained shift changes the net
    wrong = copy.deepcopy(stages)
    wrong[1].trained = (np.zeros(3), wrong[1].trained[1])
    bad = folds.run_passes(wrong, folds.DEFAULT_PASSES)
    assert not np.allclose(
        _evaluate(bad.stages, x)[inside], _evaluate(plain.stages, x)[inside], rtol=1e-3
    )


@pytest.mark.parametrize(
    "flag, guard_ops", [("--clip-guard", {"Clip"}), ("--minmax-guard", {"Max", "Min"})]
)
def test_cli_picks_the_guard_form(depressed_nets, cli_run, tmp_path: Path, flag, guard_ops) -> None:
    result = cli_run("export", depressed_nets["mlp", 3], "--out", tmp_path / "out", flag)
    assert result.exit_code == 0, result.output
    ops = _chain_ops(tmp_path / "out" / "model.onnx")
    assert guard_ops <= set(ops) and not ({"Clip", "Max", "Min"} - guard_ops) & set(ops), ops
