"""Built-in datasets: bundled inside installed packages, so nothing is downloaded."""

from __future__ import annotations

import numpy as np

from cr_edge.data.records import RawData, show
from cr_edge.errors import InputError

# scikit-learn ships these inside the wheel: nothing is downloaded.
_SKLEARN_LOADERS = {
    "digits": "load_digits",
    "breast-cancer": "load_breast_cancer",
    "wine": "load_wine",
}
BUILTINS = tuple(_SKLEARN_LOADERS)  # ("digits", "breast-cancer", "wine")
PER_MODES = ("feature", "channel")


def load_builtin(name: str) -> RawData:
    """A small dataset bundled with scikit-learn, ready to train on without any file."""
    if name not in _SKLEARN_LOADERS:
        raise InputError(
            f"unknown built-in dataset {show(name)}; use one of {', '.join(BUILTINS)} "
            "or the path of a .csv, .npz or IDX file"
        )
    from sklearn import datasets  # scikit-learn belongs to the train extra, not the core install

    bunch = getattr(datasets, _SKLEARN_LOADERS[name])()
    if name == "digits":
        # 4-bit pixels (0..16) as one-channel 8x8 images, scaled to [0, 1] like IDX images.
        x = bunch.images.astype(np.float32)[:, None] / np.float32(16)
    else:
        x = bunch.data.astype(np.float32)
    names = [str(n) for n in bunch.target_names]
    return RawData(x, bunch.target.astype(np.int64), names, name)
