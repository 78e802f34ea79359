"""The domain guard as one scalar ``Clip``: the unit-range fold, on small inline stage lists.

Each case builds the same random net twice, guarded and unfolded (per-channel ``Max``/``Min``,
coefficients as trained) and guarded and folded (``Clip(t, -1, 1)`` after the rescale went
into the previous layer), and compares both graphs under onnxruntime: outputs and the
companion's ``J(x) v``, in range and far outside it, where the guard decides the answer.
"""

from __future__ import annotations

import copy

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from cr_edge.export import onnx as onnx_export
from cr_edge.export.emit import JvpNet, PrimalNet
from cr_edge.export.folds import CLIP_GUARD_PASSES, run_passes
from cr_edge.export.stages import Affine, Flatten, Poly, Pool
from cr_edge.quantize.interval import chain_ranges
from cr_edge.quantize.measure import probe

RTOL, ATOL = 1e-4, 1e-5


def _poly(rng: np.random.Generator, channels: int, degree: int, shared: bool) -> Poly:
    coeffs = rng.normal(size=(degree + 1, 1 if shared else channels))
    lo = rng.uniform(-3.0, -0.5, channels) + rng.normal(size=channels)
    hi = lo + rng.uniform(0.5, 4.0, channels)
    return Poly(coeffs, np.ones(channels), lo=lo, hi=hi, guard=True)


def _mlp(degree: int, shared: bool) -> list:
    rng = np.random.default_rng(degree + 10 * shared)
    return [
        Affine(rng.normal(size=(6, 5)), rng.normal(size=6)),
        _poly(rng, 6, degree, shared),
        Affine(rng.normal(size=(3, 6)), rng.normal(size=3)),
    ]


def _conv() -> list:
    rng = np.random.default_rng(7)
    return [
        Affine(rng.normal(size=(4, 1, 3, 3)), rng.normal(size=4), conv=True, padding=1),
        _poly(rng, 4, 3, False),
        Pool(2),
        Flatten(),
        Affine(rng.normal(size=(2, 64)), rng.normal(size=2)),
    ]


def _run(
    stages: list, x: np.ndarray, v: np.ndarray
) -> tuple[onnx.ModelProto, np.ndarray, np.ndarray]:
    example = (torch.from_numpy(x[:2]), torch.from_numpy(v[:2]))
    primal = onnx_export.to_onnx(PrimalNet(stages), example[:1], ["x"], ["y"], 17, None)
    jvp = onnx_export.to_onnx(JvpNet(stages), example, ["x", "v"], ["y", "jvp"], 17, None)
    cpu = ["CPUExecutionProvider"]
    (y,) = ort.InferenceSession(primal.SerializeToString(), providers=cpu).run(None, {"x": x})
    _, j = ort.InferenceSession(jvp.SerializeToString(), providers=cpu).run(None, {"x": x, "v": v})
    return primal, y, j


CASES = {
    "mlp-deg3": lambda: _mlp(3, False),
    "mlp-deg2-shared": lambda: _mlp(2, True),
    "conv-deg3": _conv,
}


@pytest.mark.parametrize("case", list(CASES))
def test_guard_is_one_scalar_clip_and_keeps_outputs_and_derivatives(case: str) -> None:
    stages = CASES[case]()
    shape = (64, 1, 8, 8) if case.startswith("conv") else (64, 5)
    rng = np.random.default_rng(0)
    # in range, and 30x outside it, where most channels sit on the guard's bounds
    x = np.concatenate([rng.normal(size=shape), 30 * rng.normal(size=shape)]).astype(np.float32)
    v = rng.normal(size=x.shape).astype(np.float32)
    ref_model, y_ref, j_ref = _run(copy.deepcopy(stages), x, v)
    folded = run_passes(copy.deepcopy(stages), CLIP_GUARD_PASSES)
    model, y, j = _run(folded.stages, x, v)
    ref_ops, ops = onnx_export.op_counts(ref_model), onnx_export.op_counts(model)

    assert ref_ops.get("Max") == ref_ops.get("Min") == 1 and "Clip" not in ref_ops
    assert ops.get("Clip") == 1 and "Max" not in ops and "Min" not in ops, ops
    assert not any("guard kept" in r for r in folded.refusals), folded.refusals
    scale = np.abs(y_ref).max()
    np.testing.assert_allclose(y, y_ref, rtol=RTOL, atol=ATOL * scale)
    np.testing.assert_allclose(j, j_ref, rtol=RTOL, atol=ATOL * np.abs(j_ref).max())
    # quantize's data-free ranges read the scalar Clip as the chain's start, and hold
    ranges = chain_ranges(model)
    assert len(ranges) == ops["Mul"] + ops["Add"] + 1, ranges
    for name, got in probe(model, list(ranges), {"x": x}).items():
        lo, hi = ranges[name]
        slack = 1e-4 * max(abs(lo), abs(hi), 1.0)
        assert lo - slack <= got.min() and got.max() <= hi + slack, name


def test_a_wrong_clip_bound_is_caught() -> None:
    """The comparison above can fail: a rescale off by half the range changes the outputs."""
    stages = _mlp(3, False)
    rng = np.random.default_rng(1)
    x = (30 * rng.normal(size=(64, 5))).astype(np.float32)
    v = np.ones_like(x)
    _, y_ref, _ = _run(copy.deepcopy(stages), x, v)
    folded = run_passes(copy.deepcopy(stages), CLIP_GUARD_PASSES).stages
    folded[0].bias = folded[0].bias + 0.5  # the guard now admits z's range shifted by a quarter
    _, y_bad, _ = _run(folded, x, v)
    assert not np.allclose(y_bad, y_ref, rtol=RTOL, atol=ATOL * np.abs(y_ref).max())
