"""The int8 ExecuTorch program: within its int8 tolerance, smaller than fp32, with its floor."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from cr_edge.checkpoint import load_checkpoint
from cr_edge.export.exporter import ExportOptions, export_int8_pte, lower
from cr_edge.export.int8_stages import int8_net, int8_stages
from cr_edge.export.stages import Affine
from cr_edge.pipeline import executorch_installed
from cr_edge.runtimes.executorch import floor_of, sidecar_of
from cr_edge.validate.tolerances import INT8_LEVELS, INT8_OUTPUT_STEPS
from cr_edge.validate.validator import validate
from tests.trained import checkpoint, exported, oracle, run_pte

pytestmark = [
    pytest.mark.slow,  # end to end: trains, exports and lowers four programs
    pytest.mark.skipif(not executorch_installed(), reason="the int8 .pte needs executorch"),
    pytest.mark.filterwarnings("ignore:This API is experimental"),
]
PTE = ExportOptions(formats=("onnx", "executorch"))
NETS = ("digits-cr", "digits-conv")
# digits-cr's weights are most of its fp32 program; digits-conv's 644 weights are not (its
# program is mostly XNNPACK graph), so there int8 can only be smaller, not 0.6x.
MAX_SIZE_RATIO = {"digits-cr": 0.6, "digits-conv": 1.0}


@pytest.fixture(scope="module")
def programs(trained_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Per net: its fp32 export (with the fp32 .pte) and its int8 program, calibrated on
    the oracle's inputs as the pipeline's is."""
    made = {}
    for name in NETS:
        fp32 = exported(trained_root, name, "pte", PTE)
        folder = tmp_path_factory.mktemp(f"int8-{name}")
        (folder / "model.ref.npz").write_bytes(fp32.files["ref"].read_bytes())
        x = oracle(fp32)["x"]
        made[name] = (fp32, export_int8_pte(checkpoint(trained_root, name), folder / "m.pte", x))
    return made


@pytest.mark.parametrize("name", NETS)
def test_the_int8_program_stays_within_three_output_steps_of_the_oracle(programs, name):
    fp32, int8 = programs[name]
    ref = oracle(fp32)
    step = float(np.ptp(run_pte(fp32.files["pte"], ref["x"]))) / INT8_LEVELS  # by hand
    y = run_pte(int8.path, ref["x"])
    assert np.abs(y - ref["y"]).max() <= INT8_OUTPUT_STEPS * step
    (row,) = validate([int8.path], "executorch-xnnpack").results
    assert row.tolerances.precision == "int8" and row.outputs.status == "PASS", row.outputs


@pytest.mark.parametrize("name", NETS)
def test_the_int8_program_is_smaller_than_fp32_and_keeps_no_fp32_weights(
    programs, trained_root, name
):
    fp32, int8 = programs[name]
    size, fp32_size = int8.path.stat().st_size, fp32.files["pte"].stat().st_size
    assert size <= MAX_SIZE_RATIO[name] * fp32_size, (size, fp32_size)
    data = int8.path.read_bytes()
    ckpt = load_checkpoint(checkpoint(trained_root, name))
    stages, _ = lower(ckpt, replace(ExportOptions(), fold=False), ckpt.calib()["x"])
    for layer in int8_stages(stages, tuple(ckpt.net_config.input_shape)):
        if isinstance(layer, Affine):  # the weights the int8 program was quantized from
            first_row = layer.weight.reshape(len(layer.weight), -1)[0].astype(np.float32)
            assert first_row.tobytes() not in data
    ops = int8.delegation.ops
    for op in ("aten_linear_default", "aten_convolution_default"):
        assert ops.get(op, {}).get("portable", 0) == 0
    assert ops["quantized_decomposed_dequantize_per_channel_default"]["portable"] == 0
    assert int8.delegation.portable <= 1  # at most the flatten's reshape
    info = json.loads(sidecar_of(int8.path).read_text())
    assert "dynamic" in info["quantization"]["scheme"]


def test_the_int8_stages_compute_the_shipped_model(trained_root):
    """The guard folds widen a depressed chain's guard; the int8 program must clip there too
    (with the calibrated guard instead, outputs moved by up to 5.6 int8 steps)."""
    cases = [(name, "pte", PTE) for name in (*NETS, "breast-cancer-cr")]
    cases.append(("digits-cr", "minmax", ExportOptions(clip_guard=False, companion=False)))
    for name, kind, options in cases:
        ref = oracle(exported(trained_root, name, kind, options))
        ckpt = load_checkpoint(checkpoint(trained_root, name))
        stages, _ = lower(ckpt, replace(options, fold=False), ckpt.calib()["x"])
        shape = tuple(ckpt.net_config.input_shape)
        net = int8_net(int8_stages(stages, shape, options.clip_guard))
        with torch.no_grad():
            y = net(torch.from_numpy(ref["x"])).numpy()
        y = y[0] if isinstance(y, tuple) else y
        scale = np.abs(ref["y"]).max()
        np.testing.assert_allclose(y, ref["y"], atol=1e-4 * scale, err_msg=f"{name} {kind}")


def test_the_int8_program_has_its_floor(programs):
    fp32, int8 = programs["digits-cr"]
    floor = floor_of(int8.path)
    info = json.loads(sidecar_of(floor).read_text())
    assert info["precision"] == "fp32" and info["batch"] == {"min": 1, "max": int8.max_batch}
    x = oracle(fp32)["x"][:3]
    y = run_pte(floor, x)
    assert y.shape == run_pte(int8.path, x).shape and not y.any()
    assert floor.stat().st_size < int8.path.stat().st_size
