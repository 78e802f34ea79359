"""Input standardisation, fitted on the training split only."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cr_edge.data.records import show
from cr_edge.errors import InputError

PER_MODES = ("feature", "channel")


@dataclass(frozen=True, eq=False)
class Normalisation:
    """Input standardisation, fitted on the training split only (fitting on all data leaks
    val/test statistics). Stored as JSON in checkpoints and ONNX metadata so that every
    runtime applies exactly the same transform.
    """

    mean: np.ndarray  # float32: the sample shape for per="feature", (channels,) for "channel"
    std: np.ndarray  # float32, same shape, > 0
    per: str  # "feature" or "channel"

    def __post_init__(self) -> None:
        if self.per not in PER_MODES:
            raise InputError(
                f"normalisation field 'per' is {show(self.per)}; use one of {PER_MODES}"
            )
        mean = np.asarray(self.mean, dtype=np.float32)
        std = np.asarray(self.std, dtype=np.float32)
        if mean.shape != std.shape or mean.ndim == 0 or (self.per == "channel" and mean.ndim != 1):
            raise InputError(
                f"normalisation fields 'mean' {mean.shape} and 'std' {std.shape} do not fit "
                f"per={self.per!r}; refit the normalisation"
            )
        if not (np.isfinite(mean).all() and np.isfinite(std).all() and (std > 0).all()):
            raise InputError(
                "normalisation fields 'mean'/'std' must be finite with std > 0; "
                "refit on finite training data"
            )
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "std", std)

    def apply(self, x: np.ndarray) -> np.ndarray:
        """(x - mean) / std as float32, for a batch shaped (n, *sample_shape)."""
        x = np.asarray(x, dtype=np.float32)
        mean, std = self._broadcastable(x.shape)
        return ((x - mean) / std).astype(np.float32, copy=False)

    def _broadcastable(self, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
        if self.per == "channel":
            if len(shape) not in (3, 4) or shape[1] != len(self.mean):
                raise InputError(
                    f"inputs of shape {shape} do not fit a {len(self.mean)}-channel normalisation; "
                    "give images shaped (n, channels, h, w) or sequences (n, channels, length)"
                )
            spatial = (1,) * (len(shape) - 2)
            return self.mean.reshape(-1, *spatial), self.std.reshape(-1, *spatial)
        if tuple(shape[1:]) != self.mean.shape:
            raise InputError(
                f"inputs of shape {shape} do not fit a normalisation fitted on samples of shape "
                f"{self.mean.shape}; give inputs shaped like the training data"
            )
        return self.mean, self.std

    def to_json(self) -> dict:
        return {"per": self.per, "mean": self.mean.tolist(), "std": self.std.tolist()}

    @classmethod
    def from_json(cls, d: dict) -> Normalisation:
        if not isinstance(d, dict):
            raise InputError(f"normalisation must be a JSON object, got {type(d).__name__}")
        missing = [key for key in ("per", "mean", "std") if key not in d]
        if missing:
            raise InputError(
                f"normalisation is missing field {missing[0]!r}; refit and save it again"
            )
        try:
            mean = np.asarray(d["mean"], dtype=np.float32)
            std = np.asarray(d["std"], dtype=np.float32)
        except (TypeError, ValueError) as e:
            raise InputError(
                f"normalisation fields 'mean'/'std' are not number arrays ({e})"
            ) from e
        return cls(mean=mean, std=std, per=d["per"])


def fit_normalisation(x_train: np.ndarray, per: str) -> Normalisation:
    """Mean/std per element of the sample shape (``"feature"``) or per channel of an image or
    sequence (``"channel"``, which keeps a conv net's inputs comparable across positions).
    """
    if per not in PER_MODES:
        raise InputError(f"normalisation field 'per' is {show(per)}; use one of {PER_MODES}")
    x = np.asarray(x_train, dtype=np.float32)
    if len(x) == 0 or x.ndim < 2:
        raise InputError(f"cannot fit a normalisation on inputs of shape {x.shape}; give samples")
    if per == "channel" and x.ndim not in (3, 4):
        raise InputError(
            f"normalisation per='channel' needs images shaped (n, channels, h, w) or sequences "
            f"(n, channels, length), got {x.shape}; use per='feature'"
        )
    axes = (0, *range(2, x.ndim)) if per == "channel" else 0
    mean = x.mean(axis=axes, dtype=np.float64)  # float64 sums: float32 drifts on large sets
    std = x.std(axis=axes, dtype=np.float64)
    # A constant feature has std 0 and carries no information: dividing by 1 maps it to 0
    # instead of NaN/Inf. The relative bound also catches the rounding residue of a constant.
    std = np.where(std > 1e-6 * np.abs(mean), std, 1.0)
    return Normalisation(mean.astype(np.float32), std.astype(np.float32), per)


@dataclass(frozen=True)
class TargetScale:
    """A regression target's standardisation, fitted on the training split: the net learns
    ``(t - mean) / std`` and the exported graph returns ``y * std + mean``."""

    mean: float
    std: float

    def __post_init__(self) -> None:
        if not (np.isfinite(self.mean) and np.isfinite(self.std) and self.std > 0):
            raise InputError(
                f"target normalisation mean={self.mean} std={self.std}: must be finite, std > 0"
            )

    def apply(self, t: np.ndarray) -> np.ndarray:
        return ((np.asarray(t, np.float64) - self.mean) / self.std).astype(np.float32)

    def undo(self, y: np.ndarray) -> np.ndarray:
        return (np.asarray(y, np.float64) * self.std + self.mean).astype(np.float32)

    def to_json(self) -> dict:
        return {"mean": float(self.mean), "std": float(self.std)}

    @classmethod
    def from_json(cls, d: dict) -> TargetScale:
        return cls(float(d["mean"]), float(d["std"]))

    @classmethod
    def fit(cls, t_train: np.ndarray) -> TargetScale:
        t = np.asarray(t_train, np.float64)
        std = float(t.std())
        return cls(float(t.mean()), std if std > 0 else 1.0)
