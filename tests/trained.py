"""Tiny trained checkpoints of every zoo recipe (and a conv variant), and their exports.

Trained and exported once per test process, on demand, under the ``trained_root``
fixture (``conftest.py``), so that every export test module shares them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from cr_edge.data import BUILTINS
from cr_edge.export.exporter import ExportOptions, ExportResult, export
from cr_edge.recipe import Recipe, load_recipe, zoo_names
from cr_edge.train.loop import train

ATOL, RTOL = 1e-5, 1e-4
# an int8 .pte against its fp32 export, in output quantization steps, and top-1 agreement
INT8_P99_STEPS, INT8_MAX_STEPS, INT8_ARGMAX = 4.0, 10.0, 0.97
EPOCHS = 2
EXPORTS = {
    "shipped": ExportOptions(sensitivity=True),
    "plain": ExportOptions(domain_guard=False, companion=False),
}


def _variants() -> dict[str, Recipe]:
    offline = [n for n in zoo_names() if load_recipe(n).data in BUILTINS]  # not yelp-full-cr
    recipes = {name: load_recipe(name).replace(epochs=EPOCHS) for name in offline}
    recipes["digits-conv"] = load_recipe("digits-cr").replace(
        name="digits-conv", arch="conv", hidden=(4, 8), epochs=EPOCHS
    )
    return recipes


VARIANTS = _variants()
POLY_VARIANTS = [name for name, r in VARIANTS.items() if r.activation == "poly"]
_CACHE: dict[tuple[str, ...], object] = {}


def checkpoint(trained_root: Path, name: str) -> Path:
    """The tiny trained checkpoint of ``VARIANTS[name]``, trained once per process."""
    key = ("checkpoint", name)
    if key not in _CACHE:
        _CACHE[key] = train(VARIANTS[name], trained_root / name / "checkpoint").checkpoint
    return _CACHE[key]  # type: ignore[return-value]


def exported(
    trained_root: Path, name: str, kind: str, options: ExportOptions | None = None
) -> ExportResult:
    """``checkpoint(name)`` exported with ``EXPORTS[kind]`` (or ``options``), once per process."""
    key = ("export", name, kind)
    if key not in _CACHE:
        ckpt = checkpoint(trained_root, name)
        _CACHE[key] = export(ckpt, trained_root / name / kind, options or EXPORTS[kind])
    return _CACHE[key]  # type: ignore[return-value]


def run_onnx(path: Path, ort_format: bool = False, **feeds: np.ndarray) -> dict[str, np.ndarray]:
    """Every output of ``path`` under ONNX Runtime's CPU EP, by name."""
    options = ort.SessionOptions()
    if ort_format:
        options.add_session_config_entry("session.load_model_format", "ORT")
    sess = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(None, feeds), strict=True))


def run_pte(path: Path, x: np.ndarray) -> np.ndarray:
    """The first output of an ExecuTorch program on ``x`` (needs executorch)."""
    import torch
    from executorch.runtime import Runtime

    method = Runtime.get().load_program(path).load_method("forward")
    return method.execute([torch.from_numpy(np.ascontiguousarray(x))])[0].numpy()


def oracle(result: ExportResult) -> dict[str, np.ndarray]:
    with np.load(result.files["ref"]) as f:
        return {k: f[k] for k in f.files}


def calibration_x(trained_root: Path, name: str) -> np.ndarray:
    with np.load(checkpoint(trained_root, name) / "calib.npz") as f:
        return f["x"].astype(np.float32)
