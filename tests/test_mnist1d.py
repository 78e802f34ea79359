"""MNIST-1D: generated offline, the published 4,000/1,000 split kept, deterministic."""

from __future__ import annotations

import random
import socket

import numpy as np
import pytest

from cr_edge.data import RawData, load_source, split
from cr_edge.errors import InputError


def _no_network(*args: object, **kwargs: object) -> None:
    raise AssertionError("mnist1d tried to open a network connection")


@pytest.fixture(scope="module")
def mnist1d() -> RawData:
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(socket, "socket", _no_network)
        mp.setattr(socket, "create_connection", _no_network)
        mp.setattr(socket, "getaddrinfo", _no_network)
        return load_source("mnist1d")


def test_loads_offline_as_one_channel_sequences(mnist1d: RawData):
    assert mnist1d.x.shape == (4000, 1, 40) and mnist1d.x.dtype == np.float32
    x_test, y_test = mnist1d.test
    assert x_test.shape == (1000, 1, 40) and x_test.dtype == np.float32
    assert mnist1d.y.dtype == y_test.dtype == np.int64
    assert set(np.unique(mnist1d.y)) == set(np.unique(y_test)) == set(range(10))
    assert mnist1d.label_names == [str(c) for c in range(10)] and mnist1d.source == "mnist1d"
    assert np.isfinite(mnist1d.x).all() and np.isfinite(x_test).all()
    # make_dataset standardises all 5,000 signals together to mean 0, std 1
    both = np.concatenate([mnist1d.x, x_test]).astype(np.float64)
    assert abs(both.mean()) < 1e-6 and abs(both.std() - 1) < 1e-6


def test_published_test_split_is_kept_and_validation_comes_from_train(mnist1d: RawData):
    a, b = split(mnist1d, seed=0, val_fraction=0.15), split(mnist1d, seed=1, val_fraction=0.15)
    for ds in (a, b):
        assert (len(ds.y_train), len(ds.y_val), len(ds.y_test)) == (3400, 600, 1000)
        np.testing.assert_array_equal(ds.x_test, mnist1d.test[0])
        np.testing.assert_array_equal(ds.y_test, mnist1d.test[1])
        assert ds.input_shape == (1, 40) and ds.n_classes == 10
    assert not np.array_equal(a.y_val, b.y_val)  # the seed moves validation, never test
    # train and val partition the published train part: every signal exactly once
    joined = np.concatenate([a.x_train, a.x_val]).reshape(4000, -1)
    assert len(np.unique(joined, axis=0)) == 4000
    assert sorted(map(bytes, joined)) == sorted(map(bytes, mnist1d.x.reshape(4000, -1)))


def test_deterministic_and_leaves_the_global_rngs_alone(mnist1d: RawData):
    np.random.seed(123)
    random.seed(123)
    expected_np, expected_py = np.random.random(3), random.random()
    np.random.seed(123)
    random.seed(123)
    again = load_source("mnist1d")
    assert (np.random.random(3) == expected_np).all() and random.random() == expected_py
    assert again.x.tobytes() == mnist1d.x.tobytes() and again.y.tobytes() == mnist1d.y.tobytes()
    assert again.test[0].tobytes() == mnist1d.test[0].tobytes()


def test_fixed_test_split_must_fit_the_samples():
    x = np.zeros((4, 1, 5), np.float32)
    with pytest.raises(InputError, match="fixed test split"):
        RawData(x, np.arange(4) % 2, ["a", "b"], "s", test=(np.zeros((2, 1, 6), np.float32),) * 2)
