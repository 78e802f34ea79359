"""The Python API: the commands as functions, for notebooks and scripts.

Each function takes paths and plain values and returns the result object of its
stage, exactly what the matching ``cr-edge`` command prints.
"""

from __future__ import annotations

from pathlib import Path

from cr_edge.export.exporter import ExportOptions, ExportResult
from cr_edge.export.exporter import export as _export
from cr_edge.recipe import Recipe, load_recipe
from cr_edge.train import TrainResult
from cr_edge.train import train as _train


def train(
    recipe: str | Recipe = "digits-cr",
    out: str | Path = "runs/model",
    device: str = "auto",
    **overrides: object,
) -> TrainResult:
    """Train a zoo recipe (or a ``Recipe``), with fields overridden by keyword.

    >>> result = api.train("digits-cr", "runs/digits-cr", epochs=20)
    """
    base = recipe if isinstance(recipe, Recipe) else load_recipe(recipe)
    return _train(base.replace(**overrides), Path(out), device=device)


def export(checkpoint: str | Path, out: str | Path, **options: object) -> ExportResult:
    """Export a checkpoint folder; keywords are ``ExportOptions`` fields (``targets=("onnx", "ort")``)."""
    return _export(Path(checkpoint), Path(out), ExportOptions(**options))
