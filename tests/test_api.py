"""The Python API mirrors the commands."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from cr_edge import api
from cr_edge.errors import InputError


def test_train_then_export_through_the_api(tmp_path: Path):
    result = api.train("breast-cancer-cr", tmp_path / "ck", device="cpu", epochs=2)
    assert (tmp_path / "ck" / "model.safetensors").is_file()
    assert 0.0 <= result.metrics["test_accuracy"] <= 1.0
    exported = api.export(tmp_path / "ck", tmp_path / "ex", companion=False)
    ref = np.load(exported.files["ref"])
    (y,) = ort.InferenceSession(str(exported.files["onnx"])).run(None, {"x": ref["x"]})
    np.testing.assert_allclose(y, ref["y"], atol=1e-5, rtol=1e-4)
    for again in (
        lambda: api.train("breast-cancer-cr", tmp_path / "ck", epochs=1),
        lambda: api.export(tmp_path / "ck", tmp_path / "ex"),
    ):
        before = sorted((p.name, p.stat().st_mtime_ns) for p in tmp_path.rglob("*"))
        with pytest.raises(InputError, match="pass --force to overwrite"):
            again()
        assert sorted((p.name, p.stat().st_mtime_ns) for p in tmp_path.rglob("*")) == before


def test_importing_cr_edge_does_not_import_torch():
    code = "import sys, cr_edge, cr_edge.cli; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
