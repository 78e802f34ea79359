"""Row 9's loop: each polynomial coefficient of an export nudged by 1%, one at a time."""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

COEFF = re.compile(r"\.c\d+$")  # Horner coefficients as the exporter names them: layers.K.cN
SHARE = 0.01


def perturbed_models(exported: Path, work: Path) -> Iterator[tuple[str, Path]]:
    """Yield (what was changed, a folder holding that model and the original oracle)."""
    model = onnx.load(exported / "model.onnx")
    work.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(exported / "model.ref.npz", work / "model.ref.npz")
    coefficients = [t for t in model.graph.initializer if COEFF.search(t.name)]
    assert coefficients, "no polynomial coefficient initializers found"
    for tensor in coefficients:
        original = numpy_helper.to_array(tensor).copy()
        scale = np.abs(original).mean()
        for index in np.ndindex(original.shape):
            changed = original.copy()
            changed[index] += SHARE * (abs(changed[index]) if changed[index] else scale)
            tensor.CopyFrom(numpy_helper.from_array(changed, tensor.name))
            onnx.save(model, work / "model.onnx")
            yield f"{tensor.name}{list(index)}", work / "model.onnx"
        tensor.CopyFrom(numpy_helper.from_array(original, tensor.name))
