"""ONNX -> ORT format for ONNX Runtime's mobile and minimal builds, with its operator config.

The conversion is onnxruntime's own tool (``onnxruntime.tools.convert_onnx_models_to_ort``),
run in a child interpreter: the tool prints progress, configures the root logger when it is
imported and builds inference sessions; none of that belongs in the exporting process.

Optimization style *Fixed*: the graph optimizations (level "all", minus the x86-only NCHWc
layout, which the tool leaves out unless asked for amd64) are applied once, here, and
saved. A minimal build then loads a finished graph with no optimizer code of its own, and
``required_operators.config`` lists exactly the operators that graph runs. The other
style, *Runtime*, saves the optimizations to replay at load time; ONNX Runtime recommends
it only for NNAPI/CoreML, whose EPs want the unfused ops (use ``model.onnx`` there).

Both models (primal and derivative companion) are converted in one run, so one config
covers the pair. Everything is built in a hidden folder beside the outputs and moved into
place by ``atomic.move_into_place``: a failed conversion leaves no file under a final name.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

from cr_edge import atomic
from cr_edge.child import run_python
from cr_edge.errors import ExportError

CONVERTER = "onnxruntime.tools.convert_onnx_models_to_ort"
STYLE = "Fixed"
CONFIG_NAME = "required_operators.config"  # what the tool names the config for a folder
TIMEOUT_S = 600


def convert_to_ort(onnx_path: Path, jvp_path: Path | None = None) -> dict[str, Path]:
    """``model.ort`` (and ``model.jvp.ort``) plus ``model.required_operators.config``.

    Returns the written files under the keys ``ort``, ``jvp_ort`` and ``ort_config``.
    """
    onnx_path = Path(onnx_path)
    sources = {"ort": onnx_path} | ({"jvp_ort": Path(jvp_path)} if jvp_path else {})
    for path in sources.values():
        if not path.is_file():
            raise ExportError(f"{path}: no ONNX model to convert to ORT format")
    out = onnx_path.parent
    with tempfile.TemporaryDirectory(prefix=".ort-build-", dir=out) as tmp:
        src, built = Path(tmp) / "src", Path(tmp) / "ort"
        src.mkdir()
        for path in sources.values():
            shutil.copyfile(path, src / path.name)
        _run_converter(src, built, onnx_path)
        names = {key: path.with_suffix(".ort").name for key, path in sources.items()}
        names["ort_config"] = CONFIG_NAME
        _relabel_config(built / CONFIG_NAME, built, out)
        final = {key: out / name for key, name in names.items()}
        final["ort_config"] = out / f"{onnx_path.stem}.{CONFIG_NAME}"
        for key, name in names.items():
            _move_into_place(built / name, final[key])
    return final


def _run_converter(src: Path, built: Path, onnx_path: Path) -> None:
    """Run the converter on every model in ``src``; its stderr's last line becomes the error."""
    args = ["-m", CONVERTER, "--optimization_style", STYLE, "--output_dir", str(built), str(src)]
    try:
        proc = run_python(args, TIMEOUT_S)
    except subprocess.TimeoutExpired as e:
        raise ExportError(f"{onnx_path}: ORT-format conversion took over {TIMEOUT_S} s") from e
    if proc.returncode != 0:
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        reason = lines[-1] if lines else f"exit status {proc.returncode}"
        raise ExportError(f"{onnx_path}: ONNX Runtime could not convert it to ORT format: {reason}")
    if not (built / CONFIG_NAME).is_file():
        raise ExportError(f"{onnx_path}: the ORT converter wrote no {CONFIG_NAME}")


def _relabel_config(config: Path, built: Path, out: Path) -> None:
    """The config's header names the models it came from: point it at the final folder."""
    text = config.read_text(encoding="utf-8")
    config.write_text(text.replace(str(built.resolve()), str(out.resolve())), encoding="utf-8")


def _move_into_place(path: Path, final: Path) -> None:
    """The converter's file, published whole under ``final`` or not at all."""
    if not path.is_file():
        raise ExportError(f"{final}: the ORT converter did not produce {path.name}")
    atomic.move_into_place(path, final)
