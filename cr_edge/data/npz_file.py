"""NPZ files of arrays ``x`` and ``y``, read without unpickling.

Read by ``cr_edge.artifacts.npz``, which trusts no header with an allocation size before it has
been checked against the bytes actually present; here the arrays become ``RawData``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cr_edge.artifacts.npz import read_npz
from cr_edge.data.records import (
    RawData,
    encode_labels,
    first_bad,
    regression_targets,
    require_file,
)
from cr_edge.data.target_kind import check_classes
from cr_edge.errors import InputError

_NPZ_HINT = "save it with numpy.savez(path, x=features, y=labels)"


def load_npz(path: Path, task: str = "classify") -> RawData:
    """An ``.npz`` archive with a float array ``x`` (n, ...) and an integer array ``y`` (n,)
    (real values for ``task="regress"``)."""
    path = Path(path)
    require_file(path)
    arrays = read_npz(path, ("x", "y"), _NPZ_HINT)
    return _npz_raw(arrays["x"], arrays["y"], path, task)


def _npz_raw(x: np.ndarray, y: np.ndarray, path: Path, task: str) -> RawData:
    if x.ndim < 2 or 0 in x.shape[1:]:
        raise InputError(
            f"{path}: array 'x' has shape {x.shape}; it must be (samples, features...) "
            "with at least one feature, e.g. x.reshape(len(x), -1)"
        )
    if y.ndim != 1:
        raise InputError(
            f"{path}: array 'y' has shape {y.shape}; it must be one class label per sample "
            "(for one-hot labels save y.argmax(1))"
        )
    if len(x) != len(y):
        raise InputError(
            f"{path}: array 'x' has {len(x)} samples but 'y' has {len(y)}; make them equal"
        )
    if len(x) == 0:
        raise InputError(
            f"{path}: arrays 'x' and 'y' are empty; save at least one sample per class"
        )
    with np.errstate(over="ignore"):  # values beyond float32 become inf and are reported below
        features = x.astype(np.float32)
    if not np.isfinite(features).all():
        index = first_bad(features)
        raise InputError(
            f"{path}: array 'x' at index {list(index)} is {x[index]}, not a finite float32; "
            "remove or impute non-finite values"
        )
    where = f"{path}, array 'y'"
    if task == "regress":
        return RawData(features, regression_targets(y, where), [], str(path))
    notes = check_classes(y, where) if task == "classify" else ()
    labels, names = encode_labels(_integer_labels(y, path), where)
    return RawData(features, labels, names, str(path), notes=notes)


def _integer_labels(y: np.ndarray, path: Path) -> np.ndarray:
    """Any integers are labels (negative too); floats only if they are whole numbers."""
    if y.dtype.kind == "b":
        return y.astype(np.int64)
    if y.dtype.kind != "f":
        return y
    bad = ~np.isfinite(y) | (y != np.round(y)) | (np.abs(y) > 2**53)  # 2**53: exact in float64
    if bad.any():
        i = int(np.argmax(bad))
        raise InputError(
            f"{path}: array 'y' at index {i} is {y[i]}, not an integer class label; use ints"
        )
    return y.astype(np.int64)
