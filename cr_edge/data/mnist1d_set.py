"""MNIST-1D (Greydanus & Kobak), generated on this machine by the ``mnist1d`` package.

The ten digit templates are padded, dilated, scaled, shifted, sheared and noised into 5,000
signals of length 40, with the package's published default arguments (seed 42) and its
published split: the first 4,000 signals train, the last 1,000 test. The test part is kept as
published (``RawData.test``); validation comes out of the train part.

Nothing is downloaded. The package's ``data`` module imports ``requests`` at module level, for
``get_dataset``, which fetches a pickle from GitHub when no local copy exists. We never call
``get_dataset``: only ``get_dataset_args`` and ``make_dataset``, which are plain numpy/scipy,
and the arguments we pass lack the ``url`` field, so no code path here can reach the network
(a test generates the set with sockets blocked). Generation takes ~0.7 s on a loaded 2-core
EPYC (plus ~0.7 s to import the package), so nothing is cached on disk.

The paper's test accuracies are the sanity anchor the Fair Fight prints beside ours
(``PAPER_ACCURACY``; Greydanus & Kobak, "Scaling down deep learning with MNIST-1D", ICML 2024):
logistic regression 32%, MLP 68%, CNN 94%, GRU 91%.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator
from types import SimpleNamespace

import numpy as np

from cr_edge.data.records import RawData
from cr_edge.errors import InputError

NAME = "mnist1d"
# The paper's test accuracy (%) per model on MNIST-1D with the default arguments.
PAPER_ACCURACY = {"logistic regression": 32.0, "MLP": 68.0, "CNN": 94.0, "GRU": 91.0}
# The published defaults that define the benchmark; a package release that changed them would
# silently give a different dataset, so they are checked before generating.
PUBLISHED = {"num_samples": 5000, "train_split": 0.8, "final_seq_length": 40, "seed": 42}
N_TRAIN, N_TEST, LENGTH = 4000, 1000, 40


def load_mnist1d() -> RawData:
    """The published MNIST-1D: 4,000 train and 1,000 fixed test signals, shaped (n, 1, 40)."""
    try:
        from mnist1d.data import get_dataset_args, make_dataset
    except ImportError as e:
        raise InputError(
            f"the built-in dataset {NAME!r} needs the mnist1d package "
            f"({e}); pip install 'cr-edge[datasets]'"
        ) from e
    args = get_dataset_args(as_dict=True)
    changed = {k: args.get(k) for k, v in PUBLISHED.items() if args.get(k) != v}
    if changed:
        raise InputError(
            f"the installed mnist1d package changed the published defaults {changed} "
            f"(expected {PUBLISHED}); install mnist1d==0.0.2.post1"
        )
    args.pop("url", None)  # make_dataset never reads it; without it nothing can point online
    with _global_rng_kept():
        data = make_dataset(SimpleNamespace(**args))
    x_train, x_test = _signals(data["x"]), _signals(data["x_test"])
    y_train, y_test = data["y"].astype(np.int64), data["y_test"].astype(np.int64)
    if len(x_train) != N_TRAIN or len(x_test) != N_TEST or x_train.shape[-1] != LENGTH:
        raise InputError(
            f"mnist1d generated {len(x_train)}/{len(x_test)} signals of length "
            f"{x_train.shape[-1]}, not the published {N_TRAIN}/{N_TEST} of length {LENGTH}; "
            "install mnist1d==0.0.2.post1"
        )
    names = [str(c) for c in range(10)]
    return RawData(x_train, y_train, names, NAME, test=(x_test, y_test))


def _signals(x: np.ndarray) -> np.ndarray:
    """(n, 40) float64 -> (n, 1, 40) float32: a one-channel sequence for Conv1d."""
    return np.ascontiguousarray(x, dtype=np.float32)[:, None, :]


@contextlib.contextmanager
def _global_rng_kept() -> Iterator[None]:
    """``make_dataset`` seeds the global ``random`` and ``numpy.random`` states (its
    ``set_seed``); restore the caller's states after, so loading data changes no one's RNG.
    """
    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
