"""Calibration inputs: read, checked against the model, and fed to onnxruntime's calibrator.

Calibration data is user input, so it is checked before any quantizer sees it: a
wrong shape or dtype, or a NaN, would otherwise surface as an onnxruntime traceback
or, worse, as silently wrong activation ranges.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnxruntime.quantization import CalibrationDataReader

from cr_edge.artifacts.npz import read_npz
from cr_edge.errors import InputError

CALIB_BATCH = 64
V_SEED = 1  # directions for the companion's ``v`` input, standard normal like the oracle's


def read_calibration(path: Path, model: onnx.ModelProto) -> np.ndarray:
    """Array ``x`` of the .npz at ``path``, checked against the model's first input."""
    path = Path(path)
    arrays = read_npz(path)
    if "x" not in arrays:
        raise InputError(f"{path}: no array 'x' (has {', '.join(arrays) or 'nothing'})")
    x = arrays["x"]
    check_inputs(x, model, f"{path}: array 'x'")
    return x


def check_inputs(x: np.ndarray, model: onnx.ModelProto, what: str) -> None:
    """Refuse ``x`` unless it is finite float32 (a text model: int64 token ids) shaped like
    the model's input (any batch)."""
    value = model.graph.input[0]
    dims = [d.dim_value or None for d in value.type.tensor_type.shape.dim]
    want = "(" + ", ".join("?" if d is None else str(d) for d in dims) + ")"
    ids = value.type.tensor_type.elem_type == onnx.TensorProto.INT64
    expected = np.int64 if ids else np.float32
    if x.dtype != expected:
        kind = "int64 token ids" if ids else "float32"
        raise InputError(f"{what} is {x.dtype}; {value.name!r} expects {kind} (use astype)")
    if (
        x.ndim != len(dims)
        or x.shape[0] == 0
        or any(d is not None and d != s for d, s in zip(dims[1:], x.shape[1:], strict=True))
    ):
        raise InputError(f"{what} has shape {x.shape}; input {value.name!r} expects {want}")
    if not ids and not np.isfinite(x).all():
        raise InputError(f"{what} contains NaN or Inf; calibration needs finite samples")
    if ids and x.min(initial=0) < 0:
        raise InputError(f"{what} holds negative token ids; ids index the embedding table")


def feeds_for(model: onnx.ModelProto, x: np.ndarray) -> dict[str, np.ndarray]:
    """Inputs for ``model``: ``x``, plus fixed random directions ``v`` for a JVP companion."""
    names = [i.name for i in model.graph.input]
    feeds = {names[0]: x}
    if "v" in names[1:]:
        feeds["v"] = (
            np.random.default_rng(V_SEED).standard_normal(v_shape(model, x)).astype(np.float32)
        )
    return feeds


def v_shape(model: onnx.ModelProto, x: np.ndarray) -> tuple[int, ...]:
    """The shape of a companion's direction ``v`` for inputs ``x``: that of ``x``, or for a
    text model (int64 ids) the pooled embedding's, ``(batch, embed_dim)``, from the graph."""
    v = next(i for i in model.graph.input if i.name == "v")
    if x.dtype != np.int64:
        return x.shape
    return (x.shape[0], *(d.dim_value for d in v.type.tensor_type.shape.dim[1:]))


class NpzReader(CalibrationDataReader):
    """Hands onnxruntime the calibration feeds in batches (one pass, then ``None``)."""

    def __init__(self, feeds: dict[str, np.ndarray], fixed: int | None = None) -> None:
        n = next(iter(feeds.values())).shape[0]
        batch = fixed or CALIB_BATCH
        stop = n - n % batch if fixed and n >= batch else n  # a fixed batch takes whole chunks
        self._batches = iter(
            [{k: v[i : i + batch] for k, v in feeds.items()} for i in range(0, stop, batch)]
        )

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)
