"""What every loader returns, and the helpers their error messages share."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cr_edge.errors import InputError


@dataclass(frozen=True, eq=False)  # eq=False: comparing arrays field by field has no truth value
class RawData:
    """One labelled dataset as loaded, before any split.

    A benchmark with a published test split (MNIST-1D) carries it in ``test``, so that results
    stay comparable with the literature: ``split`` then keeps it as the test part and takes
    validation out of ``x``/``y``. Every other source leaves ``test`` empty and is split randomly.
    """

    x: np.ndarray  # float32 (n, *input_shape); images (n, channels, h, w), sequences (n, c, l);
    # text: int32 token ids (n, max_len), padded with 0 (see cr_edge.data.tokenizer)
    y: np.ndarray  # int64 class indices 0..k-1, or float32 values for regression
    label_names: list[str]  # label_names[i] is the original label of class i; [] for regression
    source: str  # a built-in name or the file path(s), for reports and the checkpoint
    test: tuple[np.ndarray, np.ndarray] | None = None  # a fixed (x_test, y_test), if published
    notes: tuple[str, ...] = ()  # what the loader noticed and a person should read

    def __post_init__(self) -> None:
        if self.test is not None:
            x_test, y_test = self.test
            if x_test.shape[1:] != self.x.shape[1:] or len(x_test) != len(y_test):
                raise InputError(
                    f"{self.source}: the fixed test split holds {len(y_test)} labels and samples "
                    f"shaped {x_test.shape}, not {self.x.shape[1:]} per sample; regenerate it"
                )


@dataclass(frozen=True, eq=False)
class Dataset:
    """Train/val/test splits of one ``RawData``: val steers training, test is reported once."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    label_names: list[str]
    input_shape: tuple[int, ...]
    source: str

    @property
    def n_classes(self) -> int:
        return len(self.label_names)

    @property
    def is_text(self) -> bool:
        """Token ids (integers) rather than float features."""
        return self.x_train.dtype.kind in "iu"

    @property
    def is_regression(self) -> bool:
        return self.y_train.dtype.kind == "f"


def show(value: object, limit: int = 40) -> str:
    """repr() cut short, so a 100 kB cell cannot turn an error into a wall of text."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def require_file(path: Path) -> None:
    if not path.exists():
        raise InputError(f"{path}: file not found; check the path")
    if not path.is_file():
        raise InputError(f"{path}: not a regular file; give the path of a data file")


def encode_labels(labels: np.ndarray, where: str) -> tuple[np.ndarray, list[str]]:
    """Map any label values to 0..k-1 in sorted order, keeping the originals as names."""
    classes, y = np.unique(labels, return_inverse=True)
    require_two_classes([str(c) for c in classes], where)
    return y.astype(np.int64).reshape(-1), [str(c) for c in classes]


def require_two_classes(names: list[str], where: str) -> None:
    if len(names) < 2:
        raise InputError(
            f"{where}: every sample has the label {show(names[0])}; "
            "a classifier needs at least two classes"
        )


def first_bad(values: np.ndarray) -> tuple[int, ...]:
    return tuple(int(i) for i in np.argwhere(~np.isfinite(values))[0])


def regression_targets(values: np.ndarray, where: str) -> np.ndarray:
    """Finite float32 targets that vary: a constant target leaves nothing to learn."""
    with np.errstate(over="ignore"):
        y = np.asarray(values, dtype=np.float64).astype(np.float32).reshape(-1)
    if not np.isfinite(y).all():
        i = int(np.argmax(~np.isfinite(y)))
        raise InputError(f"{where}: target {i} is {values[i]!r}, not a finite float32 number")
    if len(y) and float(y.max()) == float(y.min()):
        raise InputError(f"{where}: every target is {y[0]}; a regression needs varying targets")
    return y
