"""Data loading, splits and normalisation: round trips, every bad input, and fuzzing.

Every bad-input test checks the promise the CLI relies on: an ``InputError`` whose one-line
message names the file and the location (line, column or header field). The fuzz tests hold
the loaders to "only InputError may escape" on random, truncated and bit-flipped files;
set CR_EDGE_FUZZ_EXAMPLES for a longer run.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cr_edge.data import (
    BUILTINS,
    Normalisation,
    RawData,
    fit_normalisation,
    load_builtin,
    load_csv,
    load_idx,
    load_npz,
    load_source,
    split,
)
from cr_edge.errors import InputError

FUZZ = settings(
    max_examples=int(os.environ.get("CR_EDGE_FUZZ_EXAMPLES", "200")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)


# --- fixture makers --------------------------------------------------------------------------


def write_idx(
    path: Path, magic: int, dims: tuple[int, ...], payload: bytes, gz: bool = False
) -> Path:
    raw = struct.pack(">I", magic) + struct.pack(f">{len(dims)}I", *dims) + payload
    path.write_bytes(gzip.compress(raw, mtime=0) if gz else raw)
    return path


def idx_pair(folder: Path, n: int = 12, rows: int = 4, cols: int = 3, gz: bool = False):
    """MNIST-named images/labels files; returns (images, labels, pixels, targets)."""
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(n, rows, cols), dtype=np.uint8)
    targets = (np.arange(n) % 3).astype(np.uint8)
    suffix = ".gz" if gz else ""
    images = write_idx(
        folder / f"train-images-idx3-ubyte{suffix}", 0x803, (n, rows, cols), pixels.tobytes(), gz
    )
    labels = write_idx(
        folder / f"train-labels-idx1-ubyte{suffix}", 0x801, (n,), targets.tobytes(), gz
    )
    return images, labels, pixels, targets


def write_csv(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def good_csv(path: Path) -> Path:
    return write_csv(path, "a,b,label\n1,2,cat\n3,4.5,dog\n\n5,-6,cat\n")


def good_npz(path: Path, n: int = 10) -> Path:
    rng = np.random.default_rng(1)
    np.savez(path, x=rng.normal(size=(n, 3)), y=np.arange(n) % 2)
    return path


def raises_input_error(fn, *args, names: tuple[str, ...] = ()) -> str:
    """Call fn, demand an InputError whose single-line message contains every one of names."""
    with pytest.raises(InputError) as info:
        fn(*args)
    message = str(info.value)
    assert "\n" not in message
    for name in names:
        assert name in message, f"{name!r} not in {message!r}"
    return message


def toy_raw(n_per_class: tuple[int, ...] = (40, 30, 30)) -> RawData:
    """Tabular data whose first feature is the row id, so splits can be traced back."""
    y = np.concatenate([np.full(k, c) for c, k in enumerate(n_per_class)]).astype(np.int64)
    x = np.stack([np.arange(len(y)), y * 2.0], axis=1).astype(np.float32)
    return RawData(x, y, [f"c{c}" for c in range(len(n_per_class))], "toy")


# --- built-in datasets -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "shape", "n_classes"),
    [("digits", (1797, 1, 8, 8), 10), ("breast-cancer", (569, 30), 2), ("wine", (178, 13), 3)],
)
def test_builtin_shapes_and_classes(name, shape, n_classes):
    raw = load_builtin(name)
    assert raw.x.shape == shape and raw.x.dtype == np.float32
    assert raw.y.dtype == np.int64 and set(np.unique(raw.y)) == set(range(n_classes))
    assert len(raw.label_names) == n_classes and raw.source == name
    assert np.isfinite(raw.x).all()


def test_digits_pixels_are_in_unit_range():
    x = load_builtin("digits").x
    assert x.min() == 0.0 and x.max() == 1.0


def test_unknown_builtin_lists_the_valid_names():
    raises_input_error(load_builtin, "mnist", names=("'mnist'", *BUILTINS))


# --- split -----------------------------------------------------------------------------------


def test_split_is_deterministic_by_seed():
    raw = load_builtin("wine")
    a, b, c = split(raw, seed=3), split(raw, seed=3), split(raw, seed=4)
    for field in ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    assert not np.array_equal(a.x_train, c.x_train)


def test_split_fractions_partition_and_metadata():
    raw = toy_raw()
    ds = split(raw, seed=0, val_fraction=0.2, test_fraction=0.1)
    ids = [set(part[:, 0].tolist()) for part in (ds.x_train, ds.x_val, ds.x_test)]
    assert [len(s) for s in ids] == [70, 20, 10]
    assert set.union(*ids) == set(range(100)) and sum(map(len, ids)) == 100
    assert ds.input_shape == (2,) and ds.n_classes == 3 and ds.label_names == raw.label_names
    # rows keep their labels: feature 1 was built as 2 * label
    np.testing.assert_array_equal(ds.x_train[:, 1], ds.y_train * 2)


def test_split_is_stratified():
    raw = load_builtin("digits")
    ds = split(raw, seed=0)
    overall = np.bincount(raw.y) / len(raw.y)
    for y in (ds.y_train, ds.y_val, ds.y_test):
        assert np.abs(np.bincount(y, minlength=10) / len(y) - overall).max() < 0.01
    assert abs(len(ds.y_test) / len(raw.y) - 0.15) < 0.01
    assert abs(len(ds.y_val) / len(raw.y) - 0.15) < 0.01


def test_split_zero_fractions_give_empty_splits():
    ds = split(toy_raw(), seed=0, val_fraction=0.0, test_fraction=0.0)
    assert len(ds.y_train) == 100 and ds.x_val.shape == (0, 2) and ds.y_test.shape == (0,)


def test_split_falls_back_when_a_class_is_too_small():
    ds = split(toy_raw((20, 1, 1)), seed=0)
    assert len(ds.y_train) + len(ds.y_val) + len(ds.y_test) == 22


@given(
    counts=st.lists(st.integers(1, 12), min_size=2, max_size=5),
    val=st.floats(0, 0.45),
    test=st.floats(0, 0.45),
    seed=st.integers(0, 2**32 - 1),
)
@settings(max_examples=100, deadline=None)
def test_split_never_crashes_and_always_partitions(counts, val, test, seed):
    raw = toy_raw(tuple(counts))
    try:
        ds = split(raw, seed=seed, val_fraction=val, test_fraction=test)
    except InputError as e:
        assert "leave none for training" in str(e)
        return
    ids = np.concatenate([ds.x_train[:, 0], ds.x_val[:, 0], ds.x_test[:, 0]])
    assert sorted(ids.tolist()) == list(range(len(raw.y))) and len(ds.y_train) >= 1


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"seed": -1}, "seed"),
        ({"seed": 1.5}, "seed"),
        ({"seed": 0, "val_fraction": 1.0}, "val_fraction"),
        ({"seed": 0, "test_fraction": float("nan")}, "test_fraction"),
        ({"seed": 0, "val_fraction": 0.5, "test_fraction": 0.5}, "val_fraction + test_fraction"),
    ],
)
def test_split_rejects_bad_arguments(kwargs, field):
    raises_input_error(lambda: split(toy_raw(), **kwargs), names=(field,))


def test_split_too_few_samples():
    raw = RawData(np.zeros((2, 1), np.float32), np.array([0, 1]), ["a", "b"], "tiny.csv")
    raises_input_error(split, raw, 0, names=("tiny.csv", "val_fraction"))


# --- normalisation ---------------------------------------------------------------------------


def test_feature_normalisation_standardises_images_per_pixel():
    x = split(load_builtin("digits"), seed=0).x_train
    norm = fit_normalisation(x, "feature")
    assert norm.mean.shape == (1, 8, 8) and norm.mean.dtype == np.float32
    z = norm.apply(x)
    assert z.dtype == np.float32 and np.isfinite(z).all()
    varying = x.std(axis=0) > 0
    np.testing.assert_allclose(z.mean(axis=0), 0, atol=1e-4)
    np.testing.assert_allclose(z.std(axis=0)[varying], 1, atol=1e-4)
    # digits has constant-zero border pixels: std 1, so they map to exactly 0 rather than NaN
    assert (~varying).any() and (z[:, ~varying] == 0).all()


def test_feature_normalisation_on_tabular_data():
    x = load_builtin("breast-cancer").x
    z = fit_normalisation(x, "feature").apply(x)
    np.testing.assert_allclose(z.mean(axis=0), 0, atol=1e-4)
    np.testing.assert_allclose(z.std(axis=0), 1, atol=1e-4)


@pytest.mark.parametrize("sample", [(3, 5, 5), (3, 9)], ids=["image", "sequence"])
def test_channel_normalisation(sample):
    rng = np.random.default_rng(0)
    scale = np.array([1.0, 10.0, 0.1], np.float32).reshape(1, 3, *[1] * (len(sample) - 1))
    x = (rng.normal(size=(50, *sample)) * scale + 7).astype(np.float32)
    norm = fit_normalisation(x, "channel")
    assert norm.mean.shape == (3,) and norm.per == "channel"
    z = norm.apply(x)
    axes = (0, *range(2, x.ndim))
    np.testing.assert_allclose(z.mean(axis=axes), 0, atol=1e-4)
    np.testing.assert_allclose(z.std(axis=axes), 1, atol=1e-4)


@pytest.mark.parametrize("value", [0.0, 0.1, 3e5])
def test_constant_feature_gets_std_one(value):
    x = np.column_stack([np.full(30, value), np.arange(30)]).astype(np.float32)
    norm = fit_normalisation(x, "feature")
    assert norm.std[0] == 1.0
    z = norm.apply(x)
    assert np.isfinite(z).all() and np.abs(z[:, 0]).max() < 1e-3


@pytest.mark.parametrize("per", ["feature", "channel"])
def test_normalisation_json_round_trip(per):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(20, 2, 3, 3)).astype(np.float32)
    norm = fit_normalisation(x, per)
    back = Normalisation.from_json(json.loads(json.dumps(norm.to_json())))
    assert back.per == per
    np.testing.assert_array_equal(back.mean, norm.mean)
    np.testing.assert_array_equal(back.std, norm.std)
    np.testing.assert_array_equal(back.apply(x), norm.apply(x))


@pytest.mark.parametrize(
    ("d", "field"),
    [
        ({"mean": [0.0], "std": [1.0]}, "'per'"),
        ({"per": "pixel", "mean": [0.0], "std": [1.0]}, "'per'"),
        ({"per": "feature", "mean": [0.0], "std": [0.0]}, "'std'"),
        ({"per": "feature", "mean": [0.0, 1.0], "std": [1.0]}, "'mean'"),
        ({"per": "feature", "mean": ["a"], "std": [1.0]}, "'mean'"),
        ([1, 2], "JSON object"),
    ],
)
def test_normalisation_from_bad_json(d, field):
    raises_input_error(Normalisation.from_json, d, names=(field,))


def test_normalisation_rejects_mismatched_inputs():
    norm = fit_normalisation(np.random.default_rng(0).normal(size=(10, 4)), "feature")
    raises_input_error(norm.apply, np.zeros((3, 5), np.float32), names=("(3, 5)",))
    raises_input_error(fit_normalisation, np.zeros((3, 5)), "channel", names=("'channel'",))
    raises_input_error(fit_normalisation, np.zeros((3, 5)), "pixel", names=("'per'",))
    chan = fit_normalisation(np.ones((4, 2, 3, 3)), "channel")
    raises_input_error(chan.apply, np.zeros((1, 3, 3, 3)), names=("2-channel",))


# --- CSV -------------------------------------------------------------------------------------


def test_csv_round_trip(tmp_path):
    raw = load_csv(good_csv(tmp_path / "d.csv"), "label")
    np.testing.assert_array_equal(raw.x, np.array([[1, 2], [3, 4.5], [5, -6]], np.float32))
    assert raw.x.dtype == np.float32 and raw.y.tolist() == [0, 1, 0]
    assert raw.label_names == ["cat", "dog"] and raw.source == str(tmp_path / "d.csv")


def test_csv_numeric_labels_sort_as_numbers_and_bom_is_ignored(tmp_path):
    path = tmp_path / "n.csv"
    path.write_text("\ufeffy,f\n10,1\n2,2\n-1,3\n2,4\n", encoding="utf-8")
    raw = load_csv(path, "y")
    assert raw.label_names == ["-1", "2", "10"] and raw.y.tolist() == [2, 1, 0, 1]


def test_load_source_dispatches_csv(tmp_path):
    raw = load_source(str(good_csv(tmp_path / "d.csv")), label="label")
    assert raw.x.shape == (3, 2)


CSV_CASES = {
    "empty file": ("", ":1"),
    "blank first line": ("\na,label\n1,x\n", ":1"),
    "no header": ("1,2,3\n4,5,6\n", ":1"),
    "duplicate column": ("a,a,label\n1,2,x\n", "'a'"),
    "target missing": ("a,b,kind\n1,2,x\n", "'a', 'b', 'kind'"),
    "only the target": ("label\nx\ny\n", ":1"),
    "ragged row": ("a,b,label\n1,2,x\n1,2\n", ":3"),
    "ragged long row": ("a,b,label\n1,2,x,9\n", ":2"),
    "text in a feature": ("a,b,label\n1,2,x\n1,two,y\n", ":3, column 'b'"),
    "nan": ("a,b,label\n1,2,x\nnan,2,y\n", ":3, column 'a'"),
    "inf": ("a,b,label\n1,-inf,x\n1,2,y\n", ":2, column 'b'"),
    "float32 overflow": ("a,b,label\n1,1e39,x\n1,2,y\n", ":2, column 'b'"),
    "empty cell": ("a,b,label\n1,,x\n1,2,y\n", ":2, column 'b'"),
    "empty label": ("a,b,label\n1,2,\n1,2,y\n", ":2, column 'label'"),
    "no rows": ("a,b,label\n", "no data rows"),
    "single class": ("a,b,label\n1,2,x\n3,4,x\n", "column 'label'"),
    "bad quoting": ('a,b,label\n1,2,"x\n', "d.csv:"),
}


@pytest.mark.parametrize("case", CSV_CASES)
def test_csv_bad_input(tmp_path, case):
    text, location = CSV_CASES[case]
    path = write_csv(tmp_path / "d.csv", text)
    raises_input_error(load_csv, path, "label", names=(str(path), location))


def test_csv_missing_file_and_bad_encoding(tmp_path):
    missing = tmp_path / "nope.csv"
    raises_input_error(load_csv, missing, "label", names=(str(missing), "not found"))
    raises_input_error(load_csv, tmp_path, "label", names=(str(tmp_path), "not a regular file"))
    latin = tmp_path / "latin.csv"
    latin.write_bytes(b"a,label\n\xe9,x\n")
    raises_input_error(load_csv, latin, "label", names=(str(latin), "UTF-8"))


# --- NPZ -------------------------------------------------------------------------------------


def test_npz_round_trip_maps_any_int_labels(tmp_path):
    x = np.random.default_rng(0).normal(size=(6, 1, 2, 2))
    np.savez_compressed(tmp_path / "d.npz", x=x, y=np.array([5, -1, 3, 5, -1, 3]))
    raw = load_npz(tmp_path / "d.npz")
    assert raw.x.dtype == np.float32 and raw.x.shape == (6, 1, 2, 2)
    np.testing.assert_allclose(raw.x, x, rtol=1e-6)
    assert raw.label_names == ["-1", "3", "5"] and raw.y.tolist() == [2, 0, 1, 2, 0, 1]


def test_npz_whole_float_and_bool_labels(tmp_path):
    np.savez(tmp_path / "f.npz", x=np.ones((3, 2)), y=np.array([1.0, 0.0, 1.0]))
    assert load_npz(tmp_path / "f.npz").label_names == ["0", "1"]
    np.savez(tmp_path / "b.npz", x=np.ones((3, 2)), y=np.array([True, False, True]))
    assert load_source(str(tmp_path / "b.npz")).y.tolist() == [1, 0, 1]


NPZ_CASES = {
    "missing x": ({"y": np.arange(4) % 2}, "'x'"),
    "missing y": ({"x": np.ones((4, 2))}, "'y'"),
    "length mismatch": ({"x": np.ones((4, 2)), "y": np.arange(3) % 2}, "'y' has 3"),
    "nan in x": ({"x": np.array([[1, 2], [3, np.nan]]), "y": [0, 1]}, "index [1, 1]"),
    "inf in x": ({"x": np.array([[np.inf, 2], [3, 4]]), "y": [0, 1]}, "index [0, 0]"),
    "x is 1-D": ({"x": np.ones(4), "y": np.arange(4) % 2}, "'x' has shape (4,)"),
    "x has no features": ({"x": np.ones((4, 0)), "y": np.arange(4) % 2}, "'x' has shape"),
    "y is one-hot": ({"x": np.ones((2, 2)), "y": np.eye(2)}, "'y' has shape (2, 2)"),
    "fractional label": (
        {"x": np.ones((3, 2)), "y": [0, 0.5, 1]},
        "looks like a regression target",
    ),
    "nan label": ({"x": np.ones((3, 2)), "y": [0, np.nan, 1]}, "'y' at index 1"),
    "text labels": ({"x": np.ones((2, 2)), "y": np.array(["a", "b"])}, "'y' has dtype"),
    "complex x": ({"x": np.ones((2, 2), complex), "y": [0, 1]}, "'x' has dtype"),
    "empty": ({"x": np.ones((0, 2)), "y": np.zeros(0, int)}, "empty"),
    "single class": ({"x": np.ones((3, 2)), "y": [4, 4, 4]}, "array 'y'"),
}


@pytest.mark.parametrize("case", NPZ_CASES)
def test_npz_bad_input(tmp_path, case):
    arrays, location = NPZ_CASES[case]
    path = tmp_path / "d.npz"
    np.savez(path, **arrays)
    raises_input_error(load_npz, path, names=(str(path), location))


def test_npz_object_array_is_refused_without_running_code(tmp_path):
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return os.mkdir, (str(marker),)

    path = tmp_path / "evil.npz"
    np.savez(path, x=np.array([Exploit(), 1], dtype=object), y=np.array([0, 1]))
    raises_input_error(load_npz, path, names=(str(path), "'x'", "objects"))
    assert not marker.exists()


@pytest.mark.parametrize(
    ("content", "needle"),
    [(b"", "not a readable"), (b"hello, world", "not a readable"), (b"PK\x03\x04junk", "npz")],
)
def test_npz_not_an_archive(tmp_path, content, needle):
    path = tmp_path / "d.npz"
    path.write_bytes(content)
    raises_input_error(load_npz, path, names=(str(path), needle))


def test_npz_truncated_and_single_npy(tmp_path):
    full = good_npz(tmp_path / "good.npz").read_bytes()
    cut = tmp_path / "cut.npz"
    cut.write_bytes(full[: len(full) // 2])
    raises_input_error(load_npz, cut, names=(str(cut),))
    npy = tmp_path / "x.npz"
    with npy.open("wb") as f:
        np.save(f, np.ones((2, 2)))
    raises_input_error(load_npz, npy, names=(str(npy), ".npy"))
    raises_input_error(load_npz, tmp_path / "none.npz", names=("none.npz", "not found"))


def write_npz_with_header(path: Path, shape: tuple[int, ...]) -> Path:
    """A well-formed zip (valid CRCs) whose 'x' header claims shape but holds 10x3 float64."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "<f8", "fortran_order": False, "shape": shape}
    )
    y = io.BytesIO()
    np.save(y, np.arange(10) % 2)
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("x.npy", header.getvalue() + np.ones((10, 3)).tobytes())
        zf.writestr("y.npy", y.getvalue())
    return path


@pytest.mark.parametrize("shape", [(11, 3), (10**12, 3)])
def test_npz_header_that_lies_about_its_shape(tmp_path, shape):
    path = write_npz_with_header(tmp_path / "d.npz", shape)
    raises_input_error(load_npz, path, names=(str(path), "'x'", str(shape)))


def test_npz_honest_handmade_header_loads(tmp_path):
    path = write_npz_with_header(tmp_path / "d.npz", (10, 3))
    assert load_npz(path).x.shape == (10, 3)


# --- IDX -------------------------------------------------------------------------------------


@pytest.mark.parametrize("gz", [False, True])
def test_idx_round_trip(tmp_path, gz):
    images, labels, pixels, targets = idx_pair(tmp_path, gz=gz)
    raw = load_idx(images, labels)
    assert raw.x.shape == (12, 1, 4, 3) and raw.x.dtype == np.float32
    np.testing.assert_allclose(raw.x[:, 0] * 255, pixels, atol=1e-4)
    assert raw.y.tolist() == targets.tolist() and raw.label_names == ["0", "1", "2"]
    assert raw.x.min() >= 0 and raw.x.max() <= 1


def test_load_source_idx_syntaxes(tmp_path):
    images, labels, *_ = idx_pair(tmp_path, gz=True)
    pair = load_source(f"{images},{labels}")
    inferred = load_source(str(images))
    np.testing.assert_array_equal(pair.x, inferred.x)
    assert pair.source == inferred.source == f"{images},{labels}"


def test_idx_bad_magic_names_the_field_and_value(tmp_path):
    images, labels, *_ = idx_pair(tmp_path)
    raises_input_error(load_idx, labels, labels, names=(str(labels), "'magic'", "0x00000801"))
    raises_input_error(load_idx, images, images, names=(str(images), "'magic'", "0x00000803"))


@pytest.mark.parametrize("gz", [False, True])
def test_idx_dims_do_not_match_payload(tmp_path, gz):
    short = write_idx(tmp_path / "short-idx3", 0x803, (5, 4, 4), bytes(70), gz)
    raises_input_error(load_idx, short, short, names=(str(short), "count=5", "rows=4", "only 70"))
    long = write_idx(tmp_path / "long-idx3", 0x803, (1, 2, 2), bytes(5), gz)
    raises_input_error(load_idx, long, long, names=(str(long), "count=1", "more"))


def test_idx_truncated_header_and_zero_dims(tmp_path):
    stub = tmp_path / "stub"
    stub.write_bytes(b"\x00\x00")
    raises_input_error(load_idx, stub, stub, names=(str(stub), "'magic'"))
    stub.write_bytes(struct.pack(">II", 0x803, 7))
    raises_input_error(load_idx, stub, stub, names=(str(stub), "'rows'"))
    zero = write_idx(tmp_path / "zero", 0x803, (3, 0, 4), b"")
    raises_input_error(load_idx, zero, zero, names=(str(zero), "'rows' is 0"))


def test_idx_label_count_mismatch_and_single_class(tmp_path):
    images, _, _, _ = idx_pair(tmp_path, n=12)
    few = write_idx(tmp_path / "few", 0x801, (11,), bytes(11))
    raises_input_error(load_idx, images, few, names=(str(few), "'count' is 11", "12"))
    same = write_idx(tmp_path / "same", 0x801, (12,), bytes(12))
    raises_input_error(load_idx, images, same, names=(str(same), "two classes"))


def test_idx_truncated_gzip_and_missing_files(tmp_path):
    images, labels, *_ = idx_pair(tmp_path, gz=True)
    missing = tmp_path / "t10k-labels-idx1-ubyte"
    raises_input_error(load_idx, images, missing, names=(str(missing), "not found"))
    blob = images.read_bytes()
    images.write_bytes(blob[: len(blob) - 10])
    raises_input_error(load_idx, images, labels, names=(str(images),))


# --- choosing a loader -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "label", "needle"),
    [
        ("imagenet", None, "'imagenet'"),
        ("d.csv", None, "--label"),
        ("digits", "label", "'label'"),
        ("d.npz", "label", "'label'"),
        ("my-idx-file", None, "IMAGES,LABELS"),
    ],
)
def test_load_source_bad_input(source, label, needle):
    raises_input_error(load_source, source, label, names=(source, needle))


def test_load_source_builtin():
    assert load_source("wine").x.shape == (178, 13)


# --- fuzz: only InputError may escape -------------------------------------------------------


def survives(load, path: Path) -> None:
    """Loading may succeed or raise InputError naming the file; anything else is a bug."""
    try:
        load(path)
    except InputError as e:
        assert "\n" not in str(e) and path.name in str(e)


def mutate(blob: bytes, cut: int, flips: list[tuple[int, int]]) -> bytes:
    """Truncate at cut (if inside the blob), then XOR a few bytes."""
    out = bytearray(blob[:cut] if cut < len(blob) else blob)
    for position, mask in flips:
        if out:
            out[position % len(out)] ^= mask or 1
    return bytes(out)


MUTATIONS = {
    "cut": st.integers(0, 4096),
    "flips": st.lists(st.tuples(st.integers(0, 2**16), st.integers(0, 255)), max_size=3),
}


CSV_TEXT = st.text(alphabet=st.sampled_from(list('0123456789.,-+eE"\n\r ainf\x00y')), max_size=200)


@FUZZ
@given(head=st.sampled_from(["", "a,y\n", "y,a,b\n"]), body=CSV_TEXT, noise=st.binary(max_size=40))
def test_fuzz_csv(tmp_path, head, body, noise):
    path = tmp_path / "fuzz.csv"
    path.write_bytes(head.encode() + body.encode() + noise)
    survives(lambda p: load_csv(p, "y"), path)


@FUZZ
@given(compressed=st.booleans(), **MUTATIONS)
def test_fuzz_npz(tmp_path, compressed, cut, flips):
    good = tmp_path / "good.npz"
    save = np.savez_compressed if compressed else np.savez
    save(good, x=np.arange(24.0).reshape(6, 4), y=np.arange(6) % 3)
    path = tmp_path / "fuzz.npz"
    path.write_bytes(mutate(good.read_bytes(), cut, flips))
    survives(load_npz, path)


@FUZZ
@given(blob=st.binary(max_size=300), prefix=st.sampled_from([b"", b"PK\x03\x04", b"PK\x05\x06"]))
def test_fuzz_npz_random_bytes(tmp_path, blob, prefix):
    path = tmp_path / "fuzz.npz"
    path.write_bytes(prefix + blob)
    survives(load_npz, path)


@FUZZ
@given(gz=st.booleans(), which=st.sampled_from(["images", "labels"]), **MUTATIONS)
def test_fuzz_idx(tmp_path, gz, which, cut, flips):
    images, labels, *_ = idx_pair(tmp_path, n=9, rows=5, cols=5, gz=gz)
    target = images if which == "images" else labels
    target.write_bytes(mutate(target.read_bytes(), cut, flips))
    survives(lambda p: load_idx(images, labels), target)


@FUZZ
@given(blob=st.binary(max_size=300), magic=st.sampled_from([b"", b"\x00\x00\x08\x03", b"\x1f\x8b"]))
def test_fuzz_idx_random_bytes(tmp_path, blob, magic):
    path = tmp_path / "fuzz-idx3-ubyte"
    path.write_bytes(magic + blob)
    labels = write_idx(tmp_path / "labels", 0x801, (2,), b"\x00\x01")
    survives(lambda p: load_idx(p, labels), path)


def test_builtins_are_the_documented_names():
    assert BUILTINS == ("digits", "breast-cancer", "wine", "diabetes", "mnist1d", "anes96")
