"""``cr-edge export`` to ONNX: the Horner contract, parity with PyTorch, derivatives, guard, folds.

Every recipe of the model zoo (plus a conv variant) is trained for a couple of epochs once
per session; each is exported twice, as shipped (domain guard, sensitivity output,
derivative companion) and plain (no guard, no sensitivity), and the plain graph is where
the Mul/Add count per polynomial is checked against the graph itself. ONNX Runtime must
reproduce the PyTorch oracle (``model.ref.npz``) to atol 1e-5, rtol 1e-4.

The helpers at the top are shared with ``test_export_mobile.py`` through a module-level
cache, so a checkpoint is trained once per process whichever module asks first.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from trained import (
    ATOL,
    EXPORTS,
    POLY_VARIANTS,
    RTOL,
    VARIANTS,
    calibration_x,
    checkpoint,
    exported,
    oracle,
    run_onnx,
)

from cr_edge.checkpoint import load_checkpoint
from cr_edge.errors import CrEdgeError, ExportError, InputError
from cr_edge.export import folds
from cr_edge.export.exporter import ExportOptions, ExportResult, export
from cr_edge.export.stages import Affine, Flatten, InputAffine, Poly, Pool, Stage
from cr_edge.recipe import Recipe
from cr_edge.train.loop import train

LINEAR_OPS = ("Gemm", "Conv", "MatMul")  # the ops that separate one activation from the next


def metadata(path: Path) -> dict[str, str]:
    return {p.key: p.value for p in onnx.load(path).metadata_props}


def mul_add_per_segment(model: onnx.ModelProto) -> list[int]:
    """Mul/Add nodes between consecutive Gemm/Conv/MatMul nodes, in graph order.

    Counted from the graph alone (nodes are stored topologically sorted): segment 0 is
    the input side of the first linear layer, segment i the activation after layer i.
    """
    counts = [0]
    for node in model.graph.node:
        if node.op_type in LINEAR_OPS:
            counts.append(0)
        elif node.op_type in ("Mul", "Add"):
            counts[-1] += 1
    return counts


def assert_graph_contract(result: ExportResult, poly: bool) -> None:
    """No Pow, full checker, and (poly nets) the Mul/Add count each fold promises."""
    model = onnx.load(result.files["onnx"])
    assert "Pow" not in {n.op_type for n in model.graph.node}
    onnx.checker.check_model(model, full_check=True)
    assert json.loads(metadata(result.files["onnx"])["cr_edge.horner_nodes"]) == (
        result.horner_nodes
    )
    if not poly:
        assert result.horner_nodes == []
        return
    norm_kept = any("normalisation kept" in r for r in result.refusals)
    # after the last layer: nothing, or the ordinal head's one Add (the 1 + exp(-c) of sigmoid)
    tail = 1 if metadata(result.files["onnx"]).get("cr_edge.task") == "ordinal" else 0
    expected = [2 if norm_kept else 0, *result.horner_nodes, tail]
    assert mul_add_per_segment(model) == expected, result.refusals


def assert_matches_oracle(result: ExportResult) -> None:
    ref = oracle(result)
    got = run_onnx(result.files["onnx"], x=ref["x"])
    np.testing.assert_allclose(got["y"], ref["y"], atol=ATOL, rtol=RTOL)


# ---- every zoo recipe --------------------------------------------------------


@pytest.mark.parametrize("name", list(VARIANTS))
def test_plain_export_keeps_the_horner_contract(trained_root: Path, name: str) -> None:
    result = exported(trained_root, name, "plain")
    assert_graph_contract(result, VARIANTS[name].activation == "poly")
    assert_matches_oracle(result)


@pytest.mark.parametrize("name", list(VARIANTS))
def test_shipped_export_matches_pytorch(trained_root: Path, name: str) -> None:
    result = exported(trained_root, name, "shipped")
    model = onnx.load(result.files["onnx"])
    assert "Pow" not in {n.op_type for n in model.graph.node}
    onnx.checker.check_model(model, full_check=True)
    assert_matches_oracle(result)


@pytest.mark.parametrize("name", list(VARIANTS))
def test_jvp_companion_matches_autograd(trained_root: Path, name: str) -> None:
    result = exported(trained_root, name, "shipped")
    ref = oracle(result)
    got = run_onnx(result.files["jvp"], x=ref["x"], v=ref["v"])
    # a regression returns its target's own units: the absolute tolerance scales with them
    target = json.loads(metadata(result.files["onnx"]).get("cr_edge.target_normalisation", "{}"))
    atol = ATOL * target.get("std", 1.0)
    np.testing.assert_allclose(got["y"], ref["y"], atol=atol, rtol=RTOL)
    np.testing.assert_allclose(got["jvp"], ref["jvp"], atol=atol, rtol=RTOL)


@pytest.mark.parametrize("name", list(VARIANTS))
def test_sensitivity_output_is_the_dreg_sum(trained_root: Path, name: str) -> None:
    result = exported(trained_root, name, "shipped")
    x = calibration_x(trained_root, name)
    ckpt = load_checkpoint(checkpoint(trained_root, name))
    with torch.no_grad():
        _, terms = ckpt.net.forward_with_jacobians(torch.from_numpy(ckpt.normalisation.apply(x)))
    expected = torch.stack(terms).sum(dim=0).numpy()
    got = run_onnx(result.files["onnx"], x=x)["sensitivity"]
    np.testing.assert_allclose(got, expected, rtol=RTOL, atol=ATOL)
    meta = metadata(result.files["onnx"])
    p50, p99 = float(meta["cr_edge.sensitivity_p50"]), float(meta["cr_edge.sensitivity_p99"])
    assert p50 == pytest.approx(np.percentile(expected, 50), rel=1e-4)
    assert p99 == pytest.approx(np.percentile(expected, 99), rel=1e-4)


@pytest.mark.parametrize("name", POLY_VARIANTS)
def test_domain_guard_is_invisible_in_range_and_bounds_outside(
    trained_root: Path, name: str
) -> None:
    x = calibration_x(trained_root, name)
    guarded = run_onnx(exported(trained_root, name, "shipped").files["onnx"], x=x)["y"]
    plain = run_onnx(exported(trained_root, name, "plain").files["onnx"], x=x)["y"]
    np.testing.assert_allclose(guarded, plain, atol=ATOL, rtol=RTOL)
    far = run_onnx(exported(trained_root, name, "shipped").files["onnx"], x=x * 100)["y"]
    assert np.isfinite(far).all()


def test_unfolded_feature_normalisation_matches_pytorch(trained_root: Path) -> None:
    """Per-feature normalisation kept as Mul/Add (what int8 ExecuTorch exports use)."""
    options = ExportOptions(fold=False, companion=False)
    result = exported(trained_root, "breast-cancer-cr", "unfolded", options)
    assert result.horner_nodes == [6]  # degree 3, nothing folded: 3 Mul + 3 Add
    assert_matches_oracle(result)


def test_dynamic_batch_runs_any_size(trained_root: Path) -> None:
    result = exported(trained_root, "digits-cr", "shipped")
    ref = oracle(result)
    for n in (1, 2, 7, 300):
        rows = np.arange(n) % len(ref["x"])
        got = run_onnx(result.files["onnx"], x=ref["x"][rows])["y"]
        np.testing.assert_allclose(got, ref["y"][rows], atol=ATOL, rtol=RTOL)


def test_fixed_batch_has_a_static_input_shape(trained_root: Path) -> None:
    options = ExportOptions(fixed_batch=4, companion=False)
    result = exported(trained_root, "digits-cr", "batch4", options)
    model = onnx.load(result.files["onnx"])
    dims = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert dims == [4, 1, 8, 8]
    ref = oracle(result)
    np.testing.assert_allclose(
        run_onnx(result.files["onnx"], x=ref["x"][:4])["y"], ref["y"][:4], atol=ATOL, rtol=RTOL
    )


# ---- random architectures and degrees --------------------------------------


@st.composite
def recipes(draw: st.DrawFn) -> Recipe:
    arch = draw(st.sampled_from(["mlp", "conv"]))
    data = "digits" if arch == "conv" else draw(st.sampled_from(["digits", "breast-cancer"]))
    widest = 6 if arch == "conv" else 12
    hidden = draw(st.lists(st.integers(2, widest), min_size=1, max_size=2))
    return Recipe(
        name="random",
        data=data,
        arch=arch,
        hidden=tuple(hidden),
        degree=draw(st.integers(1, 5)),
        shared=draw(st.booleans()),
        epochs=1,
    )


@settings(
    max_examples=5,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(recipe=recipes())
def test_random_architectures_keep_the_contract(recipe: Recipe) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = train(recipe, Path(tmp) / "checkpoint").checkpoint
        result = export(ckpt, Path(tmp) / "out", EXPORTS["plain"])
        assert_graph_contract(result, poly=True)
        assert all(n <= 2 * recipe.degree for n in result.horner_nodes)
        assert_matches_oracle(result)


# ---- the fold passes, on hand-made stages -----------------------------------


def _evaluate(stages: list[Stage], x: np.ndarray) -> np.ndarray:
    """The net a stage list describes, in float64, polynomials in power form (not Horner)."""
    h = torch.from_numpy(x).double()
    for s in stages:
        spatial = (-1, *([1] * (h.dim() - 2)))
        if isinstance(s, InputAffine):
            h = h * torch.from_numpy(s.scale).view(spatial) + torch.from_numpy(s.offset).view(
                spatial
            )
        elif isinstance(s, Affine):
            w, b = torch.from_numpy(s.weight), torch.from_numpy(s.bias)
            conv = F.conv1d if s.spatial_dims == 1 else F.conv2d
            h = conv(h, w, b, padding=s.padding) if s.conv else F.linear(h, w, b)
        elif isinstance(s, Poly):
            h = sum(torch.from_numpy(c).view(spatial) * h**k for k, c in enumerate(s.coeffs))
        elif isinstance(s, Pool):
            h = (F.avg_pool1d if s.spatial_dims == 1 else F.avg_pool2d)(h, s.kernel)
        elif isinstance(s, Flatten):
            h = h.flatten(1)
    return h.numpy()


def _poly(rng: np.random.Generator, channels: int, lead: float) -> Poly:
    coeffs = rng.normal(scale=0.5, size=(4, channels))
    coeffs[3] = lead * (1 + 0.2 * rng.random(channels))
    return Poly(coeffs, np.ones(channels), lo=-2 * np.ones(channels), hi=2 * np.ones(channels))


def _mlp(lead: float = 0.3) -> list[Stage]:
    rng = np.random.default_rng(0)
    return [
        InputAffine(rng.uniform(0.5, 2.0, 4), rng.normal(size=4)),
        Affine(rng.normal(size=(5, 4)), rng.normal(size=5)),
        _poly(rng, 5, lead),
        Affine(rng.normal(size=(3, 5)), rng.normal(size=3)),
    ]


def _conv(first_padding: int, second_padding: int, dims: int = 2) -> list[Stage]:
    """Two 3-tap convs (Conv1d for ``dims=1``, Conv2d 3x3 for 2) on 8 (or 8x8) inputs."""
    rng = np.random.default_rng(1)
    taps = (3,) * dims
    return [
        InputAffine(rng.uniform(0.5, 2.0, 2), rng.normal(size=2)),
        Affine(rng.normal(size=(3, 2, *taps)), rng.normal(size=3), True, first_padding),
        _poly(rng, 3, 0.3),
        Affine(rng.normal(size=(2, 3, *taps)), rng.normal(size=2), True, second_padding),
        _poly(rng, 2, 0.3),
        Flatten(),
        Affine(
            rng.normal(size=(4, 2 * (8 - 4 + 2 * (first_padding + second_padding)) ** dims)),
            rng.normal(size=4),
        ),
    ]


def _mlp_x() -> np.ndarray:
    return np.random.default_rng(2).normal(size=(16, 4))


def _conv_x(dims: int = 2) -> np.ndarray:
    return np.random.default_rng(3).normal(size=(6, 2, *(8,) * dims))


CONV_DIMS = pytest.mark.parametrize("dims", [1, 2], ids=["conv1d", "conv2d"])


def _assert_exact(stages: list[Stage], fold: folds.FoldPass, x: np.ndarray) -> folds.FoldResult:
    before = _evaluate(stages, x)
    result = fold(stages)
    np.testing.assert_allclose(_evaluate(result.stages, x), before, rtol=1e-11, atol=1e-11)
    return result


def test_normalisation_folds_exactly_into_the_first_linear_layer() -> None:
    result = _assert_exact(_mlp(), folds.fold_input_normalisation, _mlp_x())
    assert result.modified and not isinstance(result.stages[0], InputAffine)


@CONV_DIMS
def test_normalisation_before_a_padded_conv_is_kept_with_a_reason(dims: int) -> None:
    result = _assert_exact(_conv(1, 0, dims), folds.fold_input_normalisation, _conv_x(dims))
    assert not result.modified and "zero-padded" in result.refusals[0]
    exact = _assert_exact(_conv(0, 0, dims), folds.fold_input_normalisation, _conv_x(dims))
    assert exact.modified


def test_depressed_shift_is_exact_and_removes_the_second_coefficient() -> None:
    result = _assert_exact(_mlp(), folds.shift_to_depressed, _mlp_x())
    poly = result.stages[2]
    assert poly.shifted and np.all(poly.coeffs[2] == 0) and poly.horner_nodes() == 5


def test_leading_coefficient_fold_is_exact_and_monic() -> None:
    result = _assert_exact(_mlp(), folds.fold_leading_coefficient, _mlp_x())
    poly = result.stages[2]
    assert poly.monic and np.all(poly.coeffs[3] == 1.0) and poly.horner_nodes() == 5


@CONV_DIMS
def test_constant_term_fold_is_exact_into_linear_and_unpadded_conv(dims: int) -> None:
    result = _assert_exact(_mlp(), folds.fold_constant_term, _mlp_x())
    assert result.stages[2].constant_folded and np.all(result.stages[2].coeffs[0] == 0)
    conv = _assert_exact(_conv(0, 0, dims), folds.fold_constant_term, _conv_x(dims))
    assert all(p.constant_folded for p in conv.stages if isinstance(p, Poly))


@CONV_DIMS
def test_constant_term_before_a_padded_conv_is_kept_with_a_reason(dims: int) -> None:
    result = _assert_exact(_conv(0, 1, dims), folds.fold_constant_term, _conv_x(dims))
    first, second = (p for p in result.stages if isinstance(p, Poly))
    assert not first.constant_folded and second.constant_folded  # the second feeds a Linear
    assert any("zero-padded" in r for r in result.refusals)


def test_tiny_leading_coefficient_is_neither_divided_by_nor_shifted() -> None:
    stages = _mlp(lead=1e-9)
    shift = _assert_exact(stages, folds.shift_to_depressed, _mlp_x())
    lead = _assert_exact(shift.stages, folds.fold_leading_coefficient, _mlp_x())
    assert not shift.modified and "too small to shift" in shift.refusals[0]
    assert not lead.modified and "too small to fold" in lead.refusals[0]


def test_all_passes_leave_a_monic_depressed_cubic_of_three_nodes() -> None:
    result = _assert_exact(_mlp(), folds.run_passes, _mlp_x())
    assert result.refusals == []
    assert [p.horner_nodes() for p in result.stages if isinstance(p, Poly)] == [3]


# ---- bad input ---------------------------------------------------------------


def _one_line_naming(error: CrEdgeError, thing: str) -> None:
    message = str(error)
    assert "\n" not in message and thing in message, message


def test_missing_checkpoint_folder(tmp_path: Path) -> None:
    with pytest.raises(InputError) as e:
        export(tmp_path / "no-such-checkpoint", tmp_path / "out")
    _one_line_naming(e.value, "no-such-checkpoint")


def test_pickle_file_is_refused(tmp_path: Path) -> None:
    pt = tmp_path / "model.pt"
    pt.write_bytes(b"\x80\x04not really a pickle")
    with pytest.raises(InputError) as e:
        export(pt, tmp_path / "out")
    _one_line_naming(e.value, "model.pt")


def test_unknown_format() -> None:
    with pytest.raises(InputError) as e:
        ExportOptions(formats=("onnx", "tflite"))
    _one_line_naming(e.value, "tflite")


def test_opset_out_of_range_writes_nothing(trained_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    with pytest.raises(ExportError) as e:
        export(checkpoint(trained_root, "digits-cr"), out, ExportOptions(opset=12))
    _one_line_naming(e.value, "--opset 12")
    assert not out.exists() or not any(out.iterdir())


def test_output_dir_that_is_a_file(trained_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "taken"
    out.write_text("not a folder")
    with pytest.raises(InputError) as e:
        export(checkpoint(trained_root, "digits-cr"), out)
    _one_line_naming(e.value, "taken")
