"""Safe loading, oracle checks and the runtime registry: bad input is one typed line."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from runtime_fixtures import build_model_dir, copy_model

from cr_edge.errors import InputError
from cr_edge.runtimes.registry import RUNTIME_NAMES, get_runtime, parse_runtimes
from cr_edge.runtimes.runtime import TensorSpec
from cr_edge.runtimes.safe_load import check_artifact, companion_of, oracle_path
from cr_edge.validate.oracle import check_against, load_oracle


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return build_model_dir(tmp_path_factory.getbasetemp())


def _external(model_dir: Path, folder: Path) -> Path:
    """model.onnx re-saved with every initializer in ``weights.bin`` beside it."""
    copy_model(model_dir, folder, ("model.ref.npz",))
    model = onnx.load(model_dir / "model.onnx")
    path = folder / "model.onnx"
    onnx.save_model(
        model, path, save_as_external_data=True, location="weights.bin", size_threshold=0
    )
    return path


def _relocate(path: Path, location: str) -> None:
    model = onnx.load(path, load_external_data=False)
    for init in model.graph.initializer:
        for entry in init.external_data:
            if entry.key == "location":
                entry.value = location
    onnx.save_model(model, path)


def test_valid_artifacts_parse(model_dir):
    onnx_art = check_artifact(model_dir / "model.onnx")
    assert onnx_art.kind == "onnx" and onnx_art.model.graph.node
    assert check_artifact(model_dir / "model.ort").kind == "ort"
    assert companion_of(model_dir / "model.ort").name == "model.jvp.ort"


def test_external_data_inside_the_folder_loads(model_dir, tmp_path):
    path = _external(model_dir, tmp_path / "ext")
    assert check_artifact(path).kind == "onnx"
    assert get_runtime("cpu").run(path, {"x": np.zeros((2, 8), np.float32)})[0].shape == (2, 4)


@pytest.mark.parametrize("how", ["dotdot", "nested-dotdot", "absolute", "symlink", "hardlink"])
def test_external_data_outside_the_folder_is_refused(model_dir, tmp_path, how):
    path = _external(model_dir, tmp_path / "ext")
    canary = tmp_path / "canary.bin"  # valid weights: if it were read, the model would load
    shutil.move(path.parent / "weights.bin", canary)
    location = {
        "dotdot": "../canary.bin",
        "nested-dotdot": "a/../../canary.bin",
        "absolute": str(canary),
        "symlink": "weights.bin",
        "hardlink": "weights.bin",
    }[how]
    if how == "symlink":
        os.symlink(canary, path.parent / "weights.bin")
    if how == "hardlink":
        os.link(canary, path.parent / "weights.bin")
    _relocate(path, location)
    with pytest.raises(InputError) as err:
        check_artifact(path)
    message = str(err.value)
    assert str(path) in message and "l1.weight" in message and location in message
    assert "\n" not in message


@pytest.mark.parametrize(
    "content, expected",
    [
        (b"this is not a model, just text\n", "ONNX"),
        (b"\x08\x07\x12\x04junk" * 3, "ONNX"),
        (b"", "empty file"),
    ],
)
def test_not_onnx_is_input_error(tmp_path, content, expected):
    path = tmp_path / "model.onnx"
    path.write_bytes(content)
    with pytest.raises(InputError, match=expected) as err:
        check_artifact(path)
    assert str(path) in str(err.value)


def test_truncated_onnx_and_ort_are_input_errors(model_dir, tmp_path):
    for name in ("model.onnx", "model.ort"):
        data = (model_dir / name).read_bytes()
        path = tmp_path / name
        path.write_bytes(data[: len(data) // 2])
        with pytest.raises(InputError) as err:
            runtime = get_runtime("cpu")
            runtime.run(path, {"x": np.zeros((1, 8), np.float32)})
        assert str(path) in str(err.value)


def test_ort_identifier_is_checked(model_dir, tmp_path):
    path = tmp_path / "model.ort"
    shutil.copy(model_dir / "model.onnx", path)  # an ONNX file under an .ort name
    with pytest.raises(InputError, match="ORTM"):
        check_artifact(path)


def test_directory_and_unknown_suffix_are_refused(tmp_path):
    (tmp_path / "d.onnx").mkdir()
    with pytest.raises(InputError, match="not a regular file"):
        check_artifact(tmp_path / "d.onnx")
    with pytest.raises(InputError, match="unknown artifact type"):
        check_artifact(tmp_path / "model.tflite")
    with pytest.raises(InputError, match="no such file"):
        check_artifact(tmp_path / "missing.onnx")


def test_oracle_is_found_beside_the_artifact(model_dir, tmp_path):
    assert oracle_path(model_dir / "model.onnx").name == "model.ref.npz"
    shutil.copy(model_dir / "model.onnx", tmp_path / "model.onnx")
    with pytest.raises(InputError, match="--ref"):
        oracle_path(tmp_path / "model.onnx")


def test_oracle_checks(model_dir, tmp_path):
    ok = load_oracle(model_dir / "model.ref.npz")
    assert ok.has_derivatives and ok.labels is not None
    cases = {
        "no-y": ({"x": ok.x}, "'y' is missing"),
        "v-only": ({"x": ok.x, "y": ok.y, "v": ok.v}, "'v' and 'jvp'"),
        "nan": ({"x": ok.x, "y": ok.y * np.nan}, "NaN"),
        "samples": ({"x": ok.x, "y": ok.y[:3]}, "same number"),
        "objects": ({"x": ok.x, "y": np.array([object()], dtype=object)}, "pickled"),
    }
    for name, (arrays, expected) in cases.items():
        path = tmp_path / f"{name}.npz"
        np.savez(path, **arrays)
        with pytest.raises(InputError, match=expected):
            load_oracle(path)
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(InputError, match=r"garbage\.npz"):
        load_oracle(garbage)


def test_oracle_must_fit_the_model_input(model_dir):
    oracle = load_oracle(model_dir / "model.ref.npz")
    model = Path("m.onnx")
    good = [TensorSpec("x", ("batch", 8), np.dtype(np.float32))]
    assert check_against(oracle, good, model) is oracle.x
    half = [TensorSpec("x", ("batch", 8), np.dtype(np.float16))]
    assert check_against(oracle, half, model).dtype == np.float16
    with pytest.raises(InputError, match=r"m.onnx input 'x' expects \(batch, 9\)"):
        check_against(oracle, [TensorSpec("x", ("batch", 9), np.dtype(np.float32))], model)
    with pytest.raises(InputError, match="int64"):
        check_against(oracle, [TensorSpec("x", (None, 8), np.dtype(np.int64))], model)
    with pytest.raises(InputError, match=r"expects inputs \(x, v\)"):
        check_against(oracle, [good[0], TensorSpec("v", ("batch", 8), np.dtype(np.float32))], model)


def test_registry_names_and_parsing():
    assert RUNTIME_NAMES == (
        "cpu",
        "ort-mobile",
        "xnnpack",
        "nnapi",
        "coreml",
        "executorch-xnnpack",
    )
    assert [r.name for r in parse_runtimes("ort-mobile, cpu,cpu")] == ["ort-mobile", "cpu"]
    assert len(parse_runtimes("all")) == len(RUNTIME_NAMES)
    with pytest.raises(InputError, match="unknown runtime 'gpu'; choose from cpu"):
        parse_runtimes("cpu,gpu")
    with pytest.raises(InputError, match="no runtime named"):
        parse_runtimes(" , ")


def test_unavailable_runtimes_say_why():
    import onnxruntime as ort

    for name in ("xnnpack", "nnapi", "coreml"):
        runtime = get_runtime(name)
        ok, why = runtime.available()
        assert ok == (runtime.provider in ort.get_available_providers())
        assert ok or runtime.provider in why
    assert get_runtime("cpu").available() == (True, "")
