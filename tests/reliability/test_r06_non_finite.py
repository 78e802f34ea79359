"""Row 6: NaN/Inf in data, loss, weights or calibration aborts, naming the step or tensor.

Each case checks both halves of the target: the error names where the non-finite
value is (within one training step for the loss and the parameters), and no
artifact was written under a final name.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from cr_edge.checkpoint import load_checkpoint, save_checkpoint
from cr_edge.errors import NonFiniteError
from cr_edge.train.loop import _step
from reliability.helpers import one_line_error, run


def finals(folder) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))


def test_nan_in_data_is_refused_before_training(tmp_path):
    x = np.ones((20, 3), np.float32)
    x[7, 2] = np.inf
    np.savez(tmp_path / "d.npz", x=x, y=np.arange(20) % 2)
    result = run("train", "--data", tmp_path / "d.npz", "--epochs", "1", "--out", tmp_path / "ck")
    assert result.exit_code == 2
    assert "'x'" in one_line_error(result)
    assert not (tmp_path / "ck").exists() or finals(tmp_path / "ck") == []


def test_a_non_finite_loss_aborts_at_its_step(checkpoint):
    net = load_checkpoint(checkpoint).net.train()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    xb = torch.ones(4, 1, 8, 8)
    xb[1, 0, 3, 3] = float("nan")
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with pytest.raises(
        NonFiniteError, match=r"training step 5: the (cross-entropy|DREG penalty) is nan"
    ):
        _step(net, opt, xb, torch.zeros(4, dtype=torch.long), 1e-3, 5)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())  # no update


def test_a_parameter_turning_non_finite_aborts_at_its_step(checkpoint):
    net = load_checkpoint(checkpoint).net.train()

    class Poisoned(torch.optim.SGD):
        def step(self, closure=None):
            super().step(closure)
            with torch.no_grad():
                next(iter(net.parameters())).view(-1)[0] = float("inf")

    with pytest.raises(NonFiniteError, match=r"training step 3: parameter '.+' became non-finite"):
        _step(
            net,
            Poisoned(net.parameters(), lr=0.1),
            torch.ones(4, 1, 8, 8),
            torch.zeros(4, dtype=torch.long),
            0.0,
            3,
        )


def test_non_finite_weights_are_never_saved(checkpoint, tmp_path):
    ck = load_checkpoint(checkpoint)
    with torch.no_grad():
        ck.net.state_dict()["blocks.1.weight"][0, 0] = float("nan")
    with pytest.raises(NonFiniteError, match=r"weight 'blocks.1.weight'"):
        save_checkpoint(
            tmp_path / "out", ck.net, ck.recipe, ck.normalisation, ck.label_names, {}, ck.calib()
        )
    assert not (tmp_path / "out").exists() or finals(tmp_path / "out") == []


def test_non_finite_weights_in_a_checkpoint_file_are_refused(checkpoint, tmp_path):
    from safetensors.torch import load, save

    ck = tmp_path / "ck"
    shutil.copytree(checkpoint, ck)
    state = load((ck / "model.safetensors").read_bytes())
    state["blocks.3.bias"][2] = float("inf")
    (ck / "model.safetensors").write_bytes(save(state))
    result = run("export", ck, "--out", tmp_path / "ex")
    assert result.exit_code == 2
    assert "'blocks.3.bias'" in one_line_error(result)
    assert not (tmp_path / "ex").exists() or finals(tmp_path / "ex") == []


def test_non_finite_calibration_is_refused_by_export(checkpoint, tmp_path):
    ck = tmp_path / "ck"
    shutil.copytree(checkpoint, ck)
    with np.load(ck / "calib.npz") as f:
        arrays = dict(f)
    arrays["x"][3, 0, 2, 2] = np.nan
    np.savez(ck / "calib.npz", **arrays)
    result = run("export", ck, "--out", tmp_path / "ex")
    assert result.exit_code == 2
    assert "calib.npz: array 'x'" in one_line_error(result)
    assert not (tmp_path / "ex").exists() or finals(tmp_path / "ex") == []


def test_non_finite_calibration_is_refused_by_quantize(exported, tmp_path):
    with np.load(exported / "model.ref.npz") as f:
        x = f["x"].copy()
    x[0, 0, 1, 1] = -np.inf
    np.savez(tmp_path / "calib.npz", x=x)
    result = run(
        "quantize",
        exported / "model.onnx",
        "--out",
        tmp_path / "q",
        "--calib",
        tmp_path / "calib.npz",
    )
    assert result.exit_code == 2
    assert "NaN or Inf" in one_line_error(result)
    assert not (tmp_path / "q").exists() or finals(tmp_path / "q") == []
