"""Row 10: a quantized model whose accuracy collapses, or whose output goes flat, fails (exit 1).

Three ways a quantized artifact can be useless, each of which must be caught with
the measured damage in the message: the naive int8 policy (min-max, no
equalization, int8 Horner chain) judged by ``quantize`` itself; a passing int8
model whose requantization scale is corrupted; and a model whose output is
near-constant — both judged by ``validate`` against the PyTorch oracle.
"""

from __future__ import annotations

import re
import shutil

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from cr_edge.quantize.policy import QuantConfig, QuantPolicy
from cr_edge.quantize.quantizer import quantize
from cr_edge.recipe import load_recipe
from cr_edge.train.loop import train
from reliability.helpers import one_line_error, run


@pytest.fixture(scope="module")
def int8(tmp_path_factory):
    """digits-cr trained to where int8 weights (``--mode w8``) pass."""
    from cr_edge.export.exporter import export

    root = tmp_path_factory.mktemp("int8")
    train(load_recipe("digits-cr").replace(epochs=20), root / "ck")
    export(root / "ck", root / "ex")
    config = QuantConfig(root / "q", QuantPolicy("w8"), root / "ck" / "calib.npz")
    result = quantize(root / "ex" / "model.onnx", config)
    assert result.chosen.passed, result.chosen.why
    return root, result.files["onnx"]


def corrupted_copy(model_path, folder, change) -> str:
    """``model_path`` with ``change(model)`` applied, beside a copy of its oracle, in ``folder``."""
    folder.mkdir()
    model = onnx.load(model_path)
    change(model)
    onnx.save(model, folder / model_path.name)
    shutil.copyfile(model_path.with_name("model.ref.npz"), folder / "model.ref.npz")
    return folder / model_path.name


def scale_times_ten(model: onnx.ModelProto) -> None:
    tensor = next(
        t
        for t in model.graph.initializer
        if t.name.endswith("_scale") and "y" not in t.name.split("_")
    )
    tensor.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(tensor) * 10, tensor.name))


def flat_output(model: onnx.ModelProto) -> None:
    """The last Gemm/MatMul weight zeroed: every input gives (nearly) the same logits."""
    last = [
        n
        for n in model.graph.node
        if n.op_type in ("Gemm", "MatMul", "MatMulInteger", "QLinearMatMul")
    ][-1]
    names = {t.name: t for t in model.graph.initializer}
    dequantized = {
        n.output[0]: n.input[0] for n in model.graph.node if n.op_type == "DequantizeLinear"
    }
    for name in (dequantized.get(i, i) for i in last.input[1:]):
        if name in names and numpy_helper.to_array(names[name]).ndim == 2:
            arr = numpy_helper.to_array(names[name])
            names[name].CopyFrom(numpy_helper.from_array(np.zeros_like(arr), name))
            return
    raise AssertionError("no weight matrix on the last linear node")


@pytest.mark.slow
def test_naive_int8_is_refused_by_quantize_with_the_measured_drop(int8, tmp_path):
    root, _ = int8
    args = [
        "--mode",
        "static",
        "--chain-precision",
        "int8",
        "--no-equalize",
        "--calib",
        root / "ck" / "calib.npz",
    ]
    result = run("quantize", root / "ex" / "model.onnx", "--out", tmp_path / "q", *args)
    assert result.exit_code == 1, result.output
    line = one_line_error(result)
    assert re.search(r"accuracy -\d+(\.\d+)?|output err \S+ > atol", line), line


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["scale", "flat"])
def test_damaged_int8_models_fail_validate_with_the_measured_error(int8, tmp_path, damage):
    _, model = int8
    assert run("validate", model, "--runtime", "cpu").exit_code == 0  # the undamaged model passes
    change = scale_times_ten if damage == "scale" else flat_output
    bad = corrupted_copy(model, tmp_path / damage, change)
    result = run("validate", bad, "--runtime", "cpu")
    assert result.exit_code == 1, result.output
    assert re.search(r"max\|Δ\||argmax|err", one_line_error(result)), result.output


def test_flat_fp32_output_fails_validate(exported, tmp_path):
    bad = corrupted_copy(exported / "model.onnx", tmp_path / "flat", flat_output)
    result = run("validate", bad, "--runtime", "cpu")
    assert result.exit_code == 1, result.output
