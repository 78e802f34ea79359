"""fp32 tolerances come from the model (issue 12): the ``--dreg 0`` row of its table.

A net with large, cancelling polynomial coefficients is built from a trained one by adding
``T8(z/3)`` (a Chebyshev polynomial: bounded by 1 on the fit interval, coefficients up to
``sum |a_k| 3^k = 577``), as a net trained without DREG has them. Its correct export
missed the fixed atol 1e-5 (validate exit 1); with the tolerance derived from the graph's
float32 rounding it passes, and a 1% change to one coefficient still fails.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from numpy.polynomial import chebyshev
from onnx import numpy_helper

from cr_edge.checkpoint import load_checkpoint, save_checkpoint
from cr_edge.export.exporter import export
from cr_edge.poly import PolyAct
from cr_edge.recipe import Recipe
from cr_edge.train.loop import train


@pytest.fixture(scope="module")
def large_coefficients(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("large")
    train(Recipe(name="d8", degree=8, hidden=(8,), epochs=3, poly_form="monomial"), root / "ck")
    ck = load_checkpoint(root / "ck")
    t8 = chebyshev.cheb2poly([0] * 8 + [1]) / 3.0 ** np.arange(9)
    with torch.no_grad():
        for block in ck.net.blocks:
            if isinstance(block, PolyAct):
                block.coeffs += torch.tensor(t8, dtype=torch.float32).view(-1, 1)
    save_checkpoint(
        root / "big", ck.net, ck.recipe, ck.normalisation, ck.label_names, ck.metrics, ck.calib()
    )
    export(root / "big", root / "export")
    return root / "export"


def test_a_correct_export_with_large_coefficients_passes_on_its_derived_tolerance(
    cli_run, large_coefficients, tmp_path
):
    model = large_coefficients / "model.onnx"
    result = cli_run("validate", model, "--runtime", "cpu", "--json", tmp_path / "r.json")
    assert result.exit_code == 0, result.output
    row = json.loads((tmp_path / "r.json").read_text())["results"][0]
    assert row["tolerances"]["atol"] > 1e-5
    assert "graph float32-vs-float64" in row["tolerances"]["sources"]["atol"]
    assert "tolerance " in result.output and "graph float32-vs-float64" in result.output
    fixed = cli_run("validate", model, "--runtime", "cpu", "--atol", "1e-5")
    assert fixed.exit_code == 1, "the fixed policy atol should be too tight for this model"


def test_a_one_percent_change_to_one_coefficient_still_fails(cli_run, large_coefficients, tmp_path):
    model = onnx.load(large_coefficients / "model.onnx")
    coeffs = [t for t in model.graph.initializer if t.name.split(".")[-1][:1] == "c"]
    coeff = coeffs[-1]  # the highest power the folds left in the chain
    changed = numpy_helper.to_array(coeff).copy()
    changed.flat[0] *= 1.01
    coeff.CopyFrom(numpy_helper.from_array(changed, coeff.name))
    (tmp_path / "m").mkdir()
    onnx.save(model, tmp_path / "m" / "model.onnx")
    (tmp_path / "m" / "model.ref.npz").write_bytes(
        (large_coefficients / "model.ref.npz").read_bytes()
    )
    result = cli_run("validate", tmp_path / "m" / "model.onnx", "--runtime", "cpu")
    assert result.exit_code == 1, result.output
    assert "[cpu] outputs: y" in result.output
