"""Row 1: external-data locations that leave the model folder are refused, the canary never read.

Each hostile model stores one initializer "W" as external data pointing at a canary
outside the model's folder: ``../x``, ``a/../../x``, an absolute path, a symlink and
a hardlink inside the folder. ``cr-edge validate`` and ``cr-edge profile`` must exit 2
with one line naming the tensor and the location, and inotify must count 0 opens of
the canary, in this process and in the sandbox child alike.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper

from reliability.canary import Canary
from reliability.helpers import one_line_error, run

CASES = ("../canary.bin", "a/../../canary.bin", "ABSOLUTE", "link.bin", "hard.bin")


def hostile_model(folder: Path, location: str) -> Path:
    """y = x + W with W (4 floats) stored at ``location``; a valid model in every other way."""
    w = TensorProto(name="W", data_type=TensorProto.FLOAT, dims=[4])
    w.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", "16")):
        w.external_data.add(key=key, value=value)
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "W"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
        [w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path = folder / "model.onnx"
    path.write_bytes(model.SerializeToString())
    np.savez(
        folder / "model.ref.npz", x=np.zeros((1, 4), np.float32), y=np.ones((1, 4), np.float32)
    )
    return path


def attack(tmp_path: Path, case: str) -> tuple[Path, Canary, str]:
    canary = Canary(tmp_path / "canary.bin", np.ones(4, np.float32).tobytes())
    folder = tmp_path / "model"
    (folder / "a").mkdir(parents=True)
    location = str(canary.path) if case == "ABSOLUTE" else case
    if case == "link.bin":
        os.symlink(canary.path, folder / case)
    if case == "hard.bin":
        os.link(canary.path, folder / case)
    return hostile_model(folder, location), canary, location


@pytest.mark.parametrize("command", ["validate", "profile"])
@pytest.mark.parametrize("case", CASES)
def test_external_data_outside_the_folder_is_refused_unread(tmp_path, case, command):
    model, canary, location = attack(tmp_path, case)
    extra = ["--runtime", "cpu"] + (["--iters", "1", "--no-memory"] if command == "profile" else [])
    result = run(command, model, *extra)
    assert result.exit_code == 2, result.output
    line = one_line_error(result)
    assert "tensor 'W'" in line and repr(location) in line, line
    assert canary.opens() == 0, f"{case}: the canary was opened {canary.opens()} time(s)"
    canary.close()
