"""ONNX -> ORT format for ONNX Runtime's mobile and minimal builds, with its operator config.

The one ``.ort`` maker, for ``export`` and ``quantize`` alike. The conversion is
onnxruntime's own tool (``onnxruntime.tools.convert_onnx_models_to_ort``), run in a child
interpreter (through ``runtimes.ort_tools``, which keeps torch out of it): the tool prints
progress, configures the root logger when it is imported and builds inference sessions;
none of that belongs in the exporting process.

Optimization style *Fixed*: the graph optimizations are applied once, here, and saved. A
minimal build then loads a finished graph with no optimizer code of its own, and
``required_operators.config`` lists exactly the operators that graph runs. The other
style, *Runtime*, saves the optimizations to replay at load time; ONNX Runtime recommends
it only for NNAPI/CoreML, whose EPs want the unfused ops (use ``model.onnx`` there).

The level differs by caller on purpose. ``export`` takes "all" (minus the x86-only NCHWc
layout, which the tool leaves out unless asked for amd64): a float graph fused as far as
ONNX Runtime can. ``quantize`` takes "basic": the extended fusions would turn its int8
Q/DQ pattern into kernels a mobile build may not carry, and the int8 ops must stay the
ones the mobile package ships.

Both models (primal and derivative companion) are converted in one run, so one config
covers the pair. Everything is built in a hidden folder beside the outputs and moved into
place by ``atomic.move_into_place``: a failed conversion leaves no file under a final name.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

from cr_edge.artifacts import atomic
from cr_edge.artifacts.child import run_python
from cr_edge.errors import ExportError

CONVERTER = ["-m", "cr_edge.runtimes.ort_tools", "convert_onnx_models_to_ort"]
STYLE = "Fixed"
LEVELS = ("basic", "extended", "all")  # onnxruntime's names; the tool reads its level from:
LEVEL_VARIABLE = "ORT_CONVERT_ONNX_MODELS_TO_ORT_OPTIMIZATION_LEVEL"
CONFIG_NAME = "required_operators.config"  # what the tool names the config for a folder
TIMEOUT_S = 600


def convert_to_ort(
    onnx_path: Path, jvp_path: Path | None = None, level: str = "all"
) -> dict[str, Path]:
    """``model.ort`` (and ``model.jvp.ort``) plus ``model.required_operators.config``,
    optimised at ``level`` (one of ``LEVELS``; see above for who takes which).

    Returns the written files under the keys ``ort``, ``jvp_ort`` and ``ort_config``.
    """
    if level not in LEVELS:
        raise ValueError(f"ORT optimization level {level!r}: use one of {', '.join(LEVELS)}")
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
        tag = "" if level == "all" else f".{level}"  # the tool's names say a level not "all"
        config = _run_converter(
            src, built, onnx_path, level, CONFIG_NAME.replace(".", f"{tag}.", 1)
        )
        built_files = {key: built / f"{path.stem}{tag}.ort" for key, path in sources.items()}
        built_files["ort_config"] = config
        _relabel_config(config, built, out)
        final = {key: out / path.with_suffix(".ort").name for key, path in sources.items()}
        final["ort_config"] = out / f"{onnx_path.stem}.{CONFIG_NAME}"
        for key, path in built_files.items():
            _move_into_place(path, final[key])
    return final


def _run_converter(src: Path, built: Path, onnx_path: Path, level: str, config_name: str) -> Path:
    """Run the converter on every model in ``src`` and return the config it wrote; its
    stderr's last line becomes the error."""
    args = [*CONVERTER, "--optimization_style", STYLE, "--output_dir", str(built), str(src)]
    config = built / config_name
    try:
        proc = run_python(args, TIMEOUT_S, extra_env={LEVEL_VARIABLE: level})
    except subprocess.TimeoutExpired as e:
        raise ExportError(f"{onnx_path}: ORT-format conversion took over {TIMEOUT_S} s") from e
    if proc.returncode != 0:
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        reason = lines[-1] if lines else f"exit status {proc.returncode}"
        raise ExportError(f"{onnx_path}: ONNX Runtime could not convert it to ORT format: {reason}")
    if not config.is_file():
        raise ExportError(f"{onnx_path}: the ORT converter wrote no {config.name}")
    return config


def _relabel_config(config: Path, built: Path, out: Path) -> None:
    """The config's header names the models it came from: point it at the final folder."""
    text = config.read_text(encoding="utf-8")
    config.write_text(text.replace(str(built.resolve()), str(out.resolve())), encoding="utf-8")


def _move_into_place(path: Path, final: Path) -> None:
    """The converter's file, published whole under ``final`` or not at all."""
    if not path.is_file():
        raise ExportError(f"{final}: the ORT converter did not produce {path.name}")
    atomic.move_into_place(path, final)
