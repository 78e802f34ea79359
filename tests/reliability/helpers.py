"""Shared by the battery's tests and ``bench/reliability.py``: artifacts, the CLI, file checks."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import onnx
from click.testing import CliRunner, Result

from cr_edge.cli import cli

REPO = Path(__file__).resolve().parents[2]
EPOCHS = 2


def checkpoint(root: Path) -> Path:
    """digits-cr trained for a couple of epochs: enough for every artifact, in seconds."""
    from cr_edge.recipe import load_recipe
    from cr_edge.train.loop import train

    return train(load_recipe("digits-cr").replace(epochs=EPOCHS), root / "checkpoint").checkpoint


EXPORT_ARGS = ("--format", "onnx,ort")  # the CLI flags that make ``exported``'s files


def exported(ckpt: Path, out: Path, sensitivity: bool = False) -> Path:
    """The shipped export (guard, companion, oracle; .ort unless ``sensitivity``)."""
    from cr_edge.export.exporter import ExportOptions, export

    formats = ("onnx",) if sensitivity else ("onnx", "ort")
    export(ckpt, out, ExportOptions(sensitivity=sensitivity, formats=formats))
    return out


def run(*args: object) -> Result:
    """``cr-edge ARGS`` in process, as a user types it."""
    return CliRunner().invoke(cli, [str(a) for a in args])


def run_process(*args: object, timeout: float = 300, **kwargs) -> subprocess.CompletedProcess:
    """``cr-edge ARGS`` as a separate process (signals, limits and kills need one)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    return subprocess.run(
        [sys.executable, "-m", "cr_edge.cli", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        **kwargs,
    )


def cli_command(*args: object) -> list[str]:
    return [sys.executable, "-m", "cr_edge.cli", *map(str, args)]


def one_line_error(result: Result | subprocess.CompletedProcess) -> str:
    """The error a command printed; fails unless it is exactly one ``error:`` line, no traceback."""
    text = result.stderr if isinstance(result, subprocess.CompletedProcess) else result.output
    lines = [line for line in text.strip().splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in text, text
    return lines[0]


def hashes(folder: Path) -> dict[str, str]:
    """sha256 of every final file under ``folder`` (see ``final_files``)."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in final_files(folder)
    }


def final_files(folder: Path) -> list[Path]:
    """Files under final names: not temporary, not lock files, not inside a hidden build folder."""
    return [
        p
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    ]


def partial_files(folder: Path) -> list[str]:
    """Final files under ``folder`` that do not parse as what their name says."""
    bad = []
    for path in final_files(folder):
        try:
            _parse(path)
        except Exception as e:  # any failure to parse is what this function counts
            bad.append(f"{path.name}: {type(e).__name__}: {e}")
    return bad


def _parse(path: Path) -> None:
    if path.suffix == ".json":
        json.loads(path.read_text())
    elif path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as f:
            [f[k] for k in f.files]
    elif path.suffix == ".onnx":
        onnx.load_model_from_string(path.read_bytes())
    elif path.suffix == ".safetensors":
        from safetensors.numpy import load

        load(path.read_bytes())
    elif path.suffix == ".ort":
        data = path.read_bytes()
        if data[4:8] != b"ORTM":
            raise ValueError("no ORTM identifier")
    elif path.suffix == ".md":
        path.read_text()
    elif zipfile.is_zipfile(path):
        zipfile.ZipFile(path).testzip()
