"""Run one Fair Fight entry end to end: train, export, quantize, profile, measure gradients.

Each entry leaves its artifacts under ``runs/<name>/`` and returns one plain
record; the per-sample gradient norms are returned beside it for the plots.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cr_edge import dreg
from cr_edge.checkpoint import load_checkpoint
from cr_edge.errors import CheckFailed
from cr_edge.export.exporter import ExportOptions, export
from cr_edge.fairfight.ladder import RunSpec
from cr_edge.profile.profiler import ProfileOptions, profile
from cr_edge.quantize.policy import QuantConfig, QuantPolicy
from cr_edge.quantize.quantizer import quantize
from cr_edge.train import train

# The default int8 form (int8 weights, float activations: no CPU-dependent integer kernel);
# one fixed policy keeps the families comparable and spares a ladder the auto search.
QUANT_POLICY = QuantPolicy(mode="w8")
PROFILE = ProfileOptions(runtimes="cpu", batches=(1,), warmup=20, iters=300, memory=False)


@dataclass(frozen=True)
class RunOutcome:
    record: dict
    grad_norms: np.ndarray


def run_entry(spec: RunSpec, root: Path) -> RunOutcome:
    """Train/export/quantize/profile ``spec`` under ``root / spec.name``."""
    folder = root / spec.name
    result = train(spec.recipe, folder / "checkpoint", device="cpu")
    exported = export(folder / "checkpoint", folder / "export", ExportOptions(companion=False))
    record = {
        "name": spec.name,
        "family": spec.family.name,
        "width": spec.width,
        "seed": spec.seed,
        "activation": spec.family.activation,
        "dreg_lambda": spec.family.dreg,
        **{
            k: result.metrics[k]
            for k in ("parameters", "test_accuracy", "tail_ratio", "peak_volatility", "grad_mean")
        },
    }
    models = [exported.files["onnx"]]
    try:
        quantized = quantize(exported.files["onnx"], QuantConfig(folder / "int8", QUANT_POLICY))
        record["int8_policy"] = quantized.chosen.policy.label
        record["int8_passed"] = quantized.chosen.passed
        record["int8_accuracy"] = quantized.chosen.accuracy
        models.append(quantized.files["onnx"])
    except CheckFailed as e:
        record["int8_policy"], record["int8_error"] = None, str(e)
    rows = profile(models, PROFILE).rows
    record["fp32_latency_us"] = rows[0].latency["p50_ms"] * 1e3
    if len(rows) > 1:
        record["int8_latency_us"] = rows[1].latency["p50_ms"] * 1e3
    return RunOutcome(record, _gradient_norms(folder / "checkpoint"))


def _gradient_norms(checkpoint: Path) -> np.ndarray:
    ckpt = load_checkpoint(checkpoint)
    calib = ckpt.calib()
    x = torch.from_numpy(ckpt.normalisation.apply(calib["x_test"]))
    return dreg.input_gradient_norms(ckpt.net, x).numpy()
