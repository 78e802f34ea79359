"""ONNX external data on a device (``cr_edge.devices.external``), over the exec transport.

A model saved with ``save_as_external_data=True`` is pushed with its data file(s),
content-addressed (a second run pushes nothing), laid out as regular files beside the
model (the loader refuses external data that is a symlink); a location that leaves the
model's folder or names no file is refused on the host in one line, before anything
is pushed.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import device_fixtures as fx
import onnx
import pytest

from cr_edge.devices.registry import Device

device_home, exec_device = fx.device_home, fx.exec_device


def _external_copy(exported: Path, folder: Path, location: str) -> Path:
    """``exported``'s model saved with every tensor in one external file at ``location``."""
    (folder / location).parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(exported / "model.ref.npz", folder / "model.ref.npz")
    model = onnx.load(str(exported / "model.onnx"))
    onnx.save(
        model,
        str(folder / "model.onnx"),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location=location,
    )
    return folder / "model.onnx"


def _relocated(model: Path, location: str) -> None:
    """Point every external tensor of ``model`` at ``location`` (the file left as it is)."""
    proto = onnx.load(str(model), load_external_data=False)
    for tensor in proto.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = location
    model.write_bytes(proto.SerializeToString())


@pytest.mark.slow
def test_external_data_is_pushed_with_its_model(
    cli_run, exec_device: Device, exported: Path, tmp_path: Path
) -> None:
    model = _external_copy(exported, tmp_path / "ext", "weights/model.data")
    assert (tmp_path / "ext" / "weights" / "model.data").stat().st_size > 1000
    out = tmp_path / "report.json"
    pushed = []
    for _ in range(2):
        result = cli_run("validate", model, "--runtime", "cpu", "--on", "here", "--json", out)
        assert result.exit_code == 0, result.output
        report = json.loads(out.read_text())
        pushed.append(report["devices"]["here"]["pushed"])
        rows = {r["runtime"]: r for r in report["results"]}
        assert rows["cpu@here"]["outputs"]["status"] == "PASS"
        assert rows["cpu@here"]["outputs"] == rows["cpu"]["outputs"]  # the same weights there
    assert "model.data" in pushed[0] and "model.onnx" in pushed[0]
    assert pushed[1] == []
    bundles = list((Path(exec_device.workdir) / "bundles").iterdir())
    assert len(bundles) == 1
    data = bundles[0] / "weights" / "model.data"
    assert data.is_file() and not data.is_symlink()
    assert data.read_bytes() == (tmp_path / "ext" / "weights" / "model.data").read_bytes()


@pytest.mark.parametrize(
    ("location", "words"),
    [("../outside.data", "escapes the model folder"), ("gone.data", "does not exist")],
)
def test_external_data_outside_or_missing_is_one_line(
    cli_run, exec_device: Device, exported: Path, tmp_path: Path, location: str, words: str
) -> None:
    model = _external_copy(exported, tmp_path / "ext", "model.data")
    (tmp_path / "outside.data").write_bytes((tmp_path / "ext" / "model.data").read_bytes())
    _relocated(model, location)
    result = cli_run("validate", model, "--runtime", "cpu", "--on", "here")
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "external data" in lines[0] and words in lines[0], result.output
    assert not (Path(exec_device.workdir) / "blobs").exists()  # refused before any push


def test_external_data_on_the_emulated_device_is_refused_in_one_line(
    cli_run, device_home: Path, exported: Path, tmp_path: Path
) -> None:
    """onnxruntime opens external data through /proc/self/fd, which the emulated root has
    not: refused before the root is even built, saying what to do instead."""
    from cr_edge.devices import registry

    model = _external_copy(exported, tmp_path / "ext", "model.data")
    registry.add(Device("a72", "emulated:arm64/cortex-a72"))
    result = cli_run("validate", model, "--runtime", "cpu", "--on", "a72")
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "external data" in lines[0] and "without" in lines[0], lines
