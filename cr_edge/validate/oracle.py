"""The parity oracle ``model.ref.npz``: PyTorch's outputs and JVPs for real inputs.

Loaded with ``allow_pickle=False`` (an npz can carry pickled objects; a validator
must never execute a file's code) and checked for internal consistency and against
the model it is meant to judge, so that a mismatch is reported as bad input naming
the file and the array rather than as a failed comparison.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cr_edge.artifacts.npz import read_npz
from cr_edge.errors import InputError
from cr_edge.runtimes.runtime import TensorSpec

REQUIRED = ("x", "y")


@dataclass(frozen=True)
class Oracle:
    """Reference arrays; samples on axis 0 of every array."""

    path: Path
    x: np.ndarray
    y: np.ndarray
    v: np.ndarray | None = None
    jvp: np.ndarray | None = None
    labels: np.ndarray | None = None
    extra: dict[str, np.ndarray] = field(default_factory=dict)  # compared by output name
    # The oracle's net evaluated in float64 (exports since issue 12): the oracle's own error.
    y_float64: np.ndarray | None = None
    jvp_float64: np.ndarray | None = None

    def own_error(self) -> tuple[float, float | None] | None:
        """``(max |y - y64|, max per-sample ||jvp - jvp64|| / ||jvp64||)``; None for old oracles."""
        if self.y_float64 is None:
            return None
        output = float(np.max(np.abs(self.y.astype(np.float64) - self.y_float64)))
        if self.jvp is None or self.jvp_float64 is None:
            return output, None
        n = self.x.shape[0]
        diff = np.linalg.norm((self.jvp - self.jvp_float64).reshape(n, -1), axis=1)
        size = np.linalg.norm(self.jvp_float64.reshape(n, -1), axis=1)
        return output, float(np.max(diff / np.maximum(size, np.finfo(np.float32).eps)))

    @property
    def has_derivatives(self) -> bool:
        return self.v is not None and self.jvp is not None

    def typical_jvp(self) -> np.ndarray | None:
        """``||J||_F ||v|| / sqrt(d)`` per sample (``jac_norm`` array; None without it): the
        size of ``J v`` along a typical direction in ``d`` dimensions (of ``v``: for text
        the pooled embedding's). Along a ``v``
        nearly orthogonal to a rank-one Jacobian (a regression or ordinal score) ``J v`` is
        a small difference of products this large, so float rounding is relative to this,
        not to ``||J v||``."""
        norm = self.extra.get("jac_norm")
        if norm is None or not self.has_derivatives or norm.shape != (self.x.shape[0],):
            return None
        n = self.x.shape[0]
        v_norm = np.linalg.norm(self.v.reshape(n, -1).astype(np.float64), axis=1)
        return norm.astype(np.float64) * v_norm / np.sqrt(self.v[0].size)

    def jvp_per_unit(self) -> np.ndarray | None:
        """``||J v|| / ||v||`` per sample: how steep the model is along the oracle directions."""
        if not self.has_derivatives:
            return None
        n = self.x.shape[0]
        v_norm = np.linalg.norm(self.v.reshape(n, -1).astype(np.float64), axis=1)
        j_norm = np.linalg.norm(self.jvp.reshape(n, -1).astype(np.float64), axis=1)
        return j_norm / np.where(v_norm > 0, v_norm, 1.0)


def load_oracle(path: Path) -> Oracle:
    """Read and check an oracle file; raise ``InputError`` naming the file and array."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: parity oracle not found (or not a regular file)")
    arrays = read_npz(path)
    for name in REQUIRED:
        if name not in arrays:
            raise InputError(f"{path}: array {name!r} is missing; an oracle needs x and y")
    for name, arr in arrays.items():
        _check_array(path, name, arr)
    x, y = arrays.pop("x"), arrays.pop("y")
    n = x.shape[0] if x.ndim else 0
    if n == 0 or y.ndim == 0 or y.shape[0] != n:
        raise InputError(
            f"{path}: arrays 'x' {x.shape} and 'y' {y.shape} must hold the same number (>= 1) "
            "of samples on axis 0"
        )
    v, jvp = arrays.pop("v", None), arrays.pop("jvp", None)
    if (v is None) != (jvp is None):
        raise InputError(f"{path}: 'v' and 'jvp' come together; only one of them is present")
    if v is not None and v.shape != x.shape and not _pooled_direction(x, v):
        raise InputError(f"{path}: array 'v' has shape {v.shape}; it must match 'x' {x.shape}")
    if jvp is not None and jvp.shape != y.shape:
        raise InputError(f"{path}: array 'jvp' has shape {jvp.shape}; it must match 'y' {y.shape}")
    labels = arrays.pop("labels", None)
    if labels is not None and (labels.shape != (n,) or labels.dtype.kind not in "iu"):
        raise InputError(
            f"{path}: array 'labels' must be integers of shape ({n},), got {labels.shape}"
        )
    wide = {k: arrays.pop(k, None) for k in ("y_float64", "jvp_float64")}
    for name, like in (("y_float64", y), ("jvp_float64", jvp)):
        if wide[name] is not None and (like is None or wide[name].shape != like.shape):
            raise InputError(f"{path}: array {name!r} must have the shape of {name[:-8]!r}")
    return Oracle(path, x, y, v, jvp, labels, arrays, wide["y_float64"], wide["jvp_float64"])


def check_against(oracle: Oracle, inputs: list[TensorSpec], model: Path) -> np.ndarray:
    """Check the oracle fits a primal model's one input; return ``x`` in the model's dtype.

    A float32 oracle may feed a float16 input (rounded); any other dtype, rank or fixed
    dimension mismatch is bad input. A fixed batch dimension is handled by the runner.
    """
    if len(inputs) != 1:
        names = ", ".join(s.name for s in inputs)
        raise InputError(
            f"{model}: expects inputs ({names}); the oracle {oracle.path} provides only x"
        )
    spec = inputs[0]
    x = oracle.x
    if x.ndim != len(spec.shape) or any(
        isinstance(d, int) and d != got for d, got in zip(spec.shape[1:], x.shape[1:], strict=True)
    ):
        raise InputError(
            f"{oracle.path}: array 'x' has shape {x.shape} but {model} input {spec.name!r} "
            f"expects {_shape_text(spec.shape)}"
        )
    if x.dtype == spec.dtype:
        return x
    if x.dtype == np.float32 and spec.dtype == np.float16:
        return x.astype(np.float16)
    raise InputError(
        f"{oracle.path}: array 'x' is {x.dtype} but {model} input {spec.name!r} "
        f"expects {spec.dtype}"
    )


def _pooled_direction(x: np.ndarray, v: np.ndarray) -> bool:
    """Token ids ``x`` take their directions ``(n, embed_dim)`` at the pooled embedding."""
    return x.dtype.kind in "iu" and v.ndim == 2 and v.shape[0] == x.shape[0]


def _check_array(path: Path, name: str, arr: np.ndarray) -> None:
    if arr.dtype.kind not in "fiub":
        raise InputError(f"{path}: array {name!r} has dtype {arr.dtype}; only numbers are accepted")
    if arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
        raise InputError(f"{path}: array {name!r} contains NaN or Inf")


def _shape_text(shape: tuple) -> str:
    return "(" + ", ".join("?" if d is None else str(d) for d in shape) + ")"
