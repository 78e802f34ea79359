"""Row 3: pickles are never loaded — object-array NPZ files and .pt checkpoints run no code.

Every payload, when unpickled, creates a marker file (the control test proves it
does). Offered to every command that reads an .npz or a checkpoint, each must be
refused with exit 2 and the marker must never appear.
"""

from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest

from reliability.helpers import one_line_error, run


class Payload:
    """Unpickling this opens (creates) ``marker``: the code execution a pickle allows."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def evil_npz(path: Path, marker: Path, name: str = "x") -> Path:
    arrays = {"x": np.zeros((4, 1, 8, 8), np.float32), "y": np.zeros(4, np.int64)}
    arrays[name] = np.array([Payload(marker)], dtype=object)
    np.savez(path, **arrays)
    return path


def test_control_the_payload_does_run_when_unpickled(tmp_path):
    marker = tmp_path / "marker"
    with np.load(evil_npz(tmp_path / "e.npz", marker), allow_pickle=True) as f:
        f["x"]
    assert marker.exists()


@pytest.mark.parametrize(
    "use", ["validate --ref", "quantize --calib", "train --data", "export calib.npz", "export y"]
)
def test_object_array_npz_is_refused_without_running_code(tmp_path, exported, checkpoint, use):
    marker = tmp_path / "marker"
    evil = evil_npz(tmp_path / "evil.npz", marker, "y" if use == "export y" else "x")
    if use == "validate --ref":
        result = run("validate", exported / "model.onnx", "--runtime", "cpu", "--ref", evil)
    elif use == "quantize --calib":
        result = run("quantize", exported / "model.onnx", "--out", tmp_path / "q", "--calib", evil)
    elif use == "train --data":
        result = run("train", "--data", evil, "--epochs", "1", "--out", tmp_path / "ck")
    else:
        ck = tmp_path / "ck"
        shutil.copytree(checkpoint, ck)
        (ck / "manifest.json").unlink()
        shutil.copyfile(evil, ck / "calib.npz")
        result = run("export", ck, "--out", tmp_path / "ex")
    assert result.exit_code == 2, result.output
    one_line_error(result)
    assert not marker.exists(), f"{use}: unpickling ran code"


@pytest.mark.parametrize("as_file", ["model.pt", "model.pkl", "folder/model.safetensors"])
def test_pickle_checkpoints_are_refused_without_running_code(tmp_path, checkpoint, as_file):
    marker = tmp_path / "marker"
    blob = pickle.dumps({"state_dict": Payload(marker)})
    if as_file.startswith("folder/"):
        target = tmp_path / "folder"
        shutil.copytree(checkpoint, target)
        (target / "manifest.json").unlink()
        (target / "model.safetensors").write_bytes(blob)
    else:
        target = tmp_path / as_file
        target.write_bytes(blob)
    result = run("export", target, "--out", tmp_path / "ex")
    assert result.exit_code == 2, result.output
    one_line_error(result)
    assert not marker.exists(), f"{as_file}: unpickling ran code"
