"""ORT-format copies of the quantized models, for the onnxruntime mobile package.

onnxruntime writes the ``.ort`` flatbuffer itself when a session is created with
``session.save_model_format = ORT`` (what ``convert_onnx_models_to_ort`` does). Basic
graph optimizations only: the extended ones fuse into kernels a mobile build may not
carry, and the int8 ops must stay the ones the mobile package ships.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import onnxruntime as ort

from cr_edge.atomic import write_bytes
from cr_edge.errors import ExportError


def write_ort(onnx_path: Path) -> Path:
    """Write ``X.ort`` beside ``X.onnx`` (atomically) and return its path."""
    target = onnx_path.with_suffix(".ort")
    with tempfile.TemporaryDirectory(prefix="cr-edge-ort-") as tmp:
        staged = Path(tmp) / target.name
        options = ort.SessionOptions()
        options.log_severity_level = 3
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        options.optimized_model_filepath = str(staged)
        options.add_session_config_entry("session.save_model_format", "ORT")
        try:
            ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime's error types derive from Exception directly
            raise ExportError(f"{onnx_path}: onnxruntime cannot write it as .ort ({e})") from e
        write_bytes(target, staged.read_bytes())
    return target
