"""Deterministic, stratified train/val/test splits."""

from __future__ import annotations

import dataclasses
import itertools
import math

import numpy as np

from cr_edge.data.records import Dataset, RawData, show
from cr_edge.errors import InputError


def split(
    raw: RawData,
    seed: int,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    in_place: bool = False,
) -> Dataset:
    """Deterministic in ``seed`` and stratified, so that small sets keep every class in each
    split in its proportion. A class too small to stratify falls back to a plain shuffle.

    A source with a fixed test split (``raw.test``) keeps it as published; ``test_fraction``
    does not apply and validation is ``val_fraction`` of the train part.

    ``in_place=True`` reorders the rows of ``raw.x`` itself (train, then val, then test)
    and returns views of it, instead of copies: for a large text corpus the splits then
    take no second copy of the ids. ``raw.x`` is changed; use ``raw`` no more.
    """
    _check_split_args(seed, val_fraction, test_fraction)
    if raw.test is not None:
        return _split_fixed_test(raw, raw.test, seed, val_fraction, in_place)
    n = len(raw.y)
    n_test, n_val = math.ceil(n * test_fraction), math.ceil(n * val_fraction)
    if n - n_test - n_val < 1:
        raise InputError(
            f"{raw.source}: {n} samples leave none for training after {n_val} val and {n_test} "
            "test; add samples or lower val_fraction/test_fraction"
        )
    rest, test = _hold_out(np.arange(n), raw.y, n_test, seed)
    train, val = _hold_out(rest, raw.y[rest], n_val, seed)
    if in_place:
        x_train, x_val, x_test = _reorder_rows_(raw.x, [train, val, test])
        return _dataset(raw, train, val, (x_test, raw.y[test]), (x_train, x_val))
    return _dataset(raw, train, val, (raw.x[test], raw.y[test]))


def _split_fixed_test(
    raw: RawData,
    test: tuple[np.ndarray, np.ndarray],
    seed: int,
    val_fraction: float,
    in_place: bool = False,
) -> Dataset:
    n = len(raw.y)
    n_val = math.ceil(n * val_fraction)
    if n - n_val < 1:
        raise InputError(
            f"{raw.source}: {n} training samples leave none after {n_val} for validation; "
            "lower val_fraction"
        )
    train, val = _hold_out(np.arange(n), raw.y, n_val, seed)
    if in_place:
        return _dataset(raw, train, val, test, tuple(_reorder_rows_(raw.x, [train, val])))
    return _dataset(raw, train, val, test)


def _reorder_rows_(x: np.ndarray, parts: list[np.ndarray]) -> list[np.ndarray]:
    """Reorder ``x``'s rows in place so that ``parts`` (index arrays that together cover
    every row once) follow each other; return a view of each. Each cycle of the permutation
    is followed with one row held aside, so no second copy of ``x`` is made."""
    order = np.concatenate(parts)
    placed = np.zeros(len(order), dtype=bool)
    held = np.empty_like(x[0])
    for start in range(len(order)):
        if placed[start]:
            continue
        held[...] = x[start]
        i = start
        while True:  # the new row i is the old row order[i]
            placed[i] = True
            j = int(order[i])
            if j == start:
                x[i] = held
                break
            x[i] = x[j]
            i = j
    bounds = np.cumsum([0] + [len(p) for p in parts])
    return [x[a:b] for a, b in itertools.pairwise(bounds)]


def _dataset(
    raw: RawData,
    train: np.ndarray,
    val: np.ndarray,
    test: tuple[np.ndarray, np.ndarray],
    x_parts: tuple[np.ndarray, np.ndarray] | None = None,
) -> Dataset:
    x_train, x_val = x_parts if x_parts is not None else (raw.x[train], raw.x[val])
    return Dataset(
        x_train=x_train,
        y_train=raw.y[train],
        x_val=x_val,
        y_val=raw.y[val],
        x_test=test[0],
        y_test=test[1],
        label_names=list(raw.label_names),
        input_shape=tuple(int(d) for d in raw.x.shape[1:]),
        source=raw.source,
    )


def subsample_train(data: Dataset, fraction: float, seed: int) -> Dataset:
    """``data`` with a stratified ``fraction`` of its training part; validation and test kept,
    so that nets trained on less data are judged on the same samples."""
    if fraction >= 1:
        return data
    n = len(data.y_train)
    keep, _ = _hold_out(np.arange(n), data.y_train, n - max(1, round(n * fraction)), seed)
    keep = np.sort(keep)
    return dataclasses.replace(data, x_train=data.x_train[keep], y_train=data.y_train[keep])


def _check_split_args(seed: int, val_fraction: float, test_fraction: float) -> None:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2**32:
        raise InputError(f"split field 'seed' is {show(seed)}; use an integer in [0, 2**32)")
    for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0 <= value < 1:  # also false for NaN
            raise InputError(f"split field {name!r} is {show(value)}; use a value in [0, 1)")
    if val_fraction + test_fraction >= 1:
        raise InputError(
            f"split fields val_fraction + test_fraction = {val_fraction + test_fraction}; "
            "keep their sum below 1 so that some data is left for training"
        )


def _hold_out(
    index: np.ndarray, y: np.ndarray, n_out: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Split ``n_out`` of ``index`` off; 0 < n_out < len(index) is the caller's promise."""
    if n_out == 0:
        return index, index[:0]
    from sklearn.model_selection import train_test_split

    if y.dtype.kind == "f":  # regression targets: nothing to stratify on
        keep, out = train_test_split(index, test_size=n_out, random_state=seed)
        return keep, out
    try:
        keep, out = train_test_split(index, test_size=n_out, random_state=seed, stratify=y)
    except ValueError:
        # sklearn refuses to stratify a class with one sample, or fewer held-out samples than
        # classes; a plain shuffle still gives a usable (if less balanced) split.
        keep, out = train_test_split(index, test_size=n_out, random_state=seed)
    return keep, out
