"""The Python API: the commands as functions, for notebooks and scripts.

Each function takes paths and plain values and returns the result object of its
stage, exactly what the matching ``cr-edge`` command prints. The checks the commands
make are made here too: a folder that already holds a result is refused unless
``force=True``; so is an export that failed its own cpu parity check, by ``validate``
and ``quantize``; ``validate`` and ``profile`` (``cr_edge.validate.validator``,
``cr_edge.profile.profiler``) open untrusted models in a sandboxed child first.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from cr_edge.artifacts.manifest import refuse_existing, refuse_failed_export
from cr_edge.export.exporter import ExportOptions, ExportResult
from cr_edge.export.exporter import export as _export
from cr_edge.quantize.policy import QuantConfig
from cr_edge.quantize.quantizer import QuantizeResult
from cr_edge.quantize.quantizer import quantize as _quantize
from cr_edge.recipe import Recipe, load_recipe
from cr_edge.train.loop import EpochStats, TrainResult
from cr_edge.train.loop import train as _train
from cr_edge.validate.tolerances import Overrides
from cr_edge.validate.validator import ValidationReport
from cr_edge.validate.validator import validate as _validate


def train(
    recipe: str | Recipe = "digits-cr",
    out: str | Path = "runs/model",
    device: str = "auto",
    force: bool = False,
    on_epoch: Callable[[EpochStats], None] | None = None,
    **overrides: object,
) -> TrainResult:
    """Train a zoo recipe (or a ``Recipe``), with fields overridden by keyword.

    >>> result = api.train("digits-cr", "runs/digits-cr", epochs=20)
    """
    refuse_existing(Path(out), "config.json", force)
    base = recipe if isinstance(recipe, Recipe) else load_recipe(recipe)
    return _train(base.replace(**overrides), Path(out), device=device, on_epoch=on_epoch)


def export(
    checkpoint: str | Path, out: str | Path, force: bool = False, **options: object
) -> ExportResult:
    """Export a checkpoint folder; keywords are ``ExportOptions`` fields (``formats=("onnx", "ort")``)."""
    refuse_existing(Path(out), "model.onnx", force)
    return _export(Path(checkpoint), Path(out), ExportOptions(**options))


def quantize(model: str | Path, config: QuantConfig, force: bool = False) -> QuantizeResult:
    """Quantize an export; ``force`` overwrites ``config.out`` and takes a failed export too."""
    refuse_existing(config.out, "quantize.json", force)
    refuse_failed_export(Path(model), force)
    return _quantize(Path(model), config)


def validate(
    artifacts: list[str | Path],
    runtimes: list[str] | str = "all",
    ref: str | Path | None = None,
    overrides: Overrides | None = None,
    derivatives: str = "auto",
    force: bool = False,
) -> ValidationReport:
    """Validate artifacts; an export that failed its own cpu check needs ``force=True``."""
    for artifact in artifacts:
        refuse_failed_export(Path(artifact), force)
    return _validate(
        [Path(a) for a in artifacts], runtimes, ref and Path(ref), overrides, derivatives
    )
