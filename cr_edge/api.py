"""The Python API: the commands as functions, for notebooks and scripts.

Each function takes paths and plain values and returns the result object of its
stage, exactly what the matching ``cr-edge`` command prints. The checks the commands
make are made here too, with the same names and defaults as the commands' options: a
folder that already holds a result is refused unless ``force=True``; an export that
failed its own cpu parity check is refused by ``validate`` and ``quantize`` unless
``accept_failed_export=True``; ``validate`` and ``profile`` (``cr_edge.validate.validator``,
``cr_edge.profile.profiler``) open untrusted models in a sandboxed child first.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from cr_edge.artifacts.manifest import refuse_existing, refuse_failed_export
from cr_edge.errors import InputError
from cr_edge.profile.profiler import ProfileOptions, ProfileReport, thread_counts
from cr_edge.profile.profiler import profile as _profile
from cr_edge.quantize.policy import QuantConfig
from cr_edge.quantize.quantizer import QuantizeResult
from cr_edge.quantize.quantizer import quantize as _quantize
from cr_edge.validate.tolerances import Overrides
from cr_edge.validate.validator import ValidationReport
from cr_edge.validate.validator import validate as _validate

if TYPE_CHECKING:  # the stages that need torch are imported when called, so that
    # validate, quantize and profile run from this module on a device without torch
    from cr_edge.export.exporter import ExportResult
    from cr_edge.pipeline import PipelineResult
    from cr_edge.recipe import Recipe
    from cr_edge.train.loop import EpochStats, TrainResult


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
    from cr_edge.recipe import Recipe, load_recipe
    from cr_edge.train.loop import train as _train

    refuse_existing(Path(out), "config.json", force)
    base = recipe if isinstance(recipe, Recipe) else load_recipe(recipe)
    return _train(base.replace(**overrides), Path(out), device=device, on_epoch=on_epoch)


def export(
    checkpoint: str | Path, out: str | Path, force: bool = False, **options: object
) -> ExportResult:
    """Export a checkpoint folder; keywords are ``ExportOptions`` fields (``formats=("onnx", "ort")``)."""
    from cr_edge.export.exporter import ExportOptions
    from cr_edge.export.exporter import export as _export

    refuse_existing(Path(out), "model.onnx", force)
    return _export(Path(checkpoint), Path(out), ExportOptions(**options))


def quantize(
    model: str | Path,
    config: QuantConfig,
    force: bool = False,
    accept_failed_export: bool = False,
    certify_on: str | list[str] | None = None,
) -> QuantizeResult:
    """Quantize an export; ``force`` overwrites ``config.out``. ``certify_on``: device
    names (or ``auto``, the emulated ARM64 device) on which a candidate must pass too."""
    refuse_existing(config.out, "quantize.json", force)
    refuse_failed_export(Path(model), accept_failed_export)
    hook, note = None, ""
    if certify_on:
        from cr_edge.devices.certify import certifier

        hook, note = certifier(certify_on)
    result = _quantize(Path(model), config, hook)
    if note:
        result.notes.append(note)
    return result


def validate(
    artifacts: list[str | Path],
    runtimes: list[str] | str = "all",
    ref: str | Path | None = None,
    derivatives: str = "auto",
    atol: float | None = None,
    rtol: float | None = None,
    deriv_rtol: float | None = None,
    min_cosine: float | None = None,
    accept_failed_export: bool = False,
    on: str | list[str] | None = None,
) -> ValidationReport:
    """Validate artifacts; tolerances left ``None`` come from each model's precision (see
    ``cr_edge.validate.tolerances``). An export that failed its own cpu check needs
    ``accept_failed_export=True``. ``on``: device names (``cr-edge device add``) that
    validate the same artifacts too; their rows are ``RUNTIME@NAME``."""
    for artifact in artifacts:
        refuse_failed_export(Path(artifact), accept_failed_export)
    overrides = Overrides(atol=atol, rtol=rtol, deriv_rtol=deriv_rtol, min_cosine=min_cosine)
    paths = [Path(a) for a in artifacts]

    def here() -> ValidationReport:
        return _validate(paths, runtimes, ref and Path(ref), overrides, derivatives)

    if not on:
        return here()
    from cr_edge.devices import commands, launch

    devices = launch.parse_names(on)
    argv = launch.validate_argv(
        runtimes, derivatives, atol, rtol, deriv_rtol, min_cosine, accept_failed_export
    )
    return commands.validate_on(devices, paths, argv, ref and Path(ref), here)


def profile(
    artifacts: list[str | Path],
    runtimes: list[str] | str = "all",
    batches: tuple[int, ...] = (1,),
    threads: tuple[int, ...] | str | None = None,
    warmup: int = 50,
    iters: int | None = None,
    seconds: float | None = None,
    per_op: bool = False,
    memory: bool = True,
    floor: bool = True,
    on_progress: Callable[[float], None] | None = None,
    on: str | list[str] | None = None,
) -> ProfileReport:
    """Time artifacts on this machine, interleaved; ``iters`` defaults to 1000 runs.

    ``on``: device names that profile the same artifacts afterwards, one at a time; the
    result then carries their runs (``device_runs``; an emulated one is not a timing)."""
    if iters is not None and seconds is not None:
        raise InputError("give --iters or --seconds, not both")
    options = ProfileOptions(
        runtimes=runtimes if isinstance(runtimes, str) else ",".join(runtimes),
        batches=tuple(batches),
        threads=thread_counts(threads),
        warmup=warmup,
        iters=iters or 1000,
        seconds=seconds,
        per_op=per_op,
        memory=memory,
        floor=floor,
    )
    devices = []
    if on:
        from cr_edge.devices import commands, launch

        devices = launch.parse_names(on)  # an unknown name fails before any timing
    report = _profile([Path(a) for a in artifacts], options, on_progress)
    if not devices:
        return report
    argv = launch.profile_argv(
        runtimes, batches, threads, warmup, iters, seconds, per_op, memory, floor
    )
    runs = commands.profile_on(devices, [Path(a) for a in artifacts], argv)
    return commands.profile_with_devices(report, runs)


def pipeline(
    recipe: str | Recipe = "digits-cr",
    out: str | Path | None = None,
    runtimes: list[str] | str = "all",
    epochs: int | None = None,
    force: bool = False,
    on_step: Callable[[str], None] | None = None,
    certify_on: str | list[str] | None = "auto",
    on: str | list[str] | None = None,
) -> PipelineResult:
    """Train, export, quantize, validate and profile into ``out`` (default runs/RECIPE).

    ``certify_on``: devices quantize's choice must pass on too; ``auto``, the emulated
    ARM64 device where it can be built (the summary says when it cannot); ``none``: off.
    ``on``: devices that validate and profile the models too."""
    from cr_edge.pipeline import run_pipeline as _pipeline
    from cr_edge.recipe import Recipe, load_recipe

    chosen = (recipe if isinstance(recipe, Recipe) else load_recipe(recipe)).replace(epochs=epochs)
    folder = Path(out) if out is not None else Path("runs") / chosen.name
    names = runtimes if isinstance(runtimes, str) else ",".join(runtimes)
    return _pipeline(chosen, folder, names, force, on_step=on_step, certify_on=certify_on, on=on)


def fairfight(
    data: str = "digits",
    budget: str = "quick",
    out: str | Path | None = None,
    label: str | None = None,
    task: str = "classify",
    workers: int | None = None,
    ray_address: str | None = None,
    force: bool = False,
    reuse_stale: bool = False,
    progress: Callable | None = None,
) -> dict:
    """Run (or resume) a Fair Fight into ``out`` (default runs/fairfight-DATA); its report."""
    from cr_edge.fairfight.engine import Engine, default_workers
    from cr_edge.fairfight.fight import fairfight as _fight

    folder = Path(out) if out is not None else Path("runs") / f"fairfight-{Path(data).stem}"
    refuse_existing(folder, "report.json", force)
    engine = Engine(workers=workers or default_workers(), ray=ray_address)
    return _fight(
        data,
        budget,
        folder,
        label,
        engine=engine,
        progress=progress,
        task=task,
        reuse_stale=reuse_stale,
    )
