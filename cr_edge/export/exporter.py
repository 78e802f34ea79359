"""``cr-edge export``: a checkpoint folder in, deployable files out.

Writes ``model.onnx`` (Horner-lowered, folded), optionally ``model.jvp.onnx``
(the derivative companion), ``model.ref.npz`` (the parity oracle), and the
mobile formats asked for. Each file is written atomically; the oracle last,
so a folder with an oracle has the models it describes. The last step checks the
model against that oracle on the CPU (``self_check``): an export that fails it
raises ``SelfCheckFailed`` (exit 1), its files kept and its manifest saying so.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from cr_edge import __version__
from cr_edge.artifacts.folder_lock import holds_out
from cr_edge.artifacts.metadata import (
    COMPANION_ROLE,
    PRODUCER,
    SCHEMA_VERSION,
    ModelMetadata,
    props,
    write_props_,
)
from cr_edge.checkpoint import Checkpoint, load_checkpoint
from cr_edge.errors import InputError, NonFiniteError
from cr_edge.export import onnx as onnx_export
from cr_edge.export.emit import JvpNet, PrimalNet
from cr_edge.export.folds import (
    CLIP_GUARD_PASSES,
    DEFAULT_PASSES,
    activation_stages,
    run_passes,
)
from cr_edge.export.int8_stages import int8_net, int8_stages
from cr_edge.export.oracle_writer import ReferenceNet, build_oracle, reference_inputs, save_oracle
from cr_edge.export.self_check import SelfCheckFailed, check_export, failure_message
from cr_edge.export.stages import Poly, calibrate_ranges, stages_from_checkpoint
from cr_edge.export.version_guard import FORMATS, check_model, parse_runtime_version
from cr_edge.validate.validator import ValidationReport

# What each task's model returns, named in the metadata (cr_edge.outputs) for apps.
OUTPUTS = {
    "classify": {"y": "logits, one per class (argmax is the class)"},
    "regress": {"y": "the predicted value, in the target's own units"},
    "ordinal": {
        "y": "class probabilities P(y = k), k = 0..K-1 (rank-consistent CORAL head)",
        "rank": "expected rank sum_k P(y > k), on the class-index scale 0..K-1",
    },
}
GUARD_MARGIN = 0.25  # the guard admits the calibrated range widened by this share of its span


@dataclass(frozen=True)
class ExportOptions:
    """What ``cr-edge export`` makes; stored in the model's metadata."""

    opset: int = onnx_export.DEFAULT_OPSET
    fixed_batch: int | None = None  # None: dynamic batch axis
    companion: bool = True  # also write the derivative companion model.jvp.onnx
    sensitivity: bool = False
    domain_guard: bool = True
    # The guard as one scalar Clip per polynomial (each channel's range rescaled onto [-1, 1]
    # in the previous layer) instead of a per-channel Max/Min pair: one node fewer per
    # guard, and a guard CoreML's MLProgram runs. The rescaled rows move int8 weight codes,
    # so quantize skips and counts the samples at the guard's edge (cr_edge.validate.kink_skips).
    # A fold pass: with fold=False (or clip_guard=False) the guard is Max/Min.
    clip_guard: bool = True
    fold: bool = True
    formats: tuple[str, ...] = ("onnx",)
    int8: bool = False  # ExecuTorch only: PT2E int8 with the XNNPACK quantizer
    runtime_version: str | None = None  # e.g. cpu==1.17: refuse what it cannot load

    def __post_init__(self) -> None:
        unknown = [f for f in self.formats if f not in FORMATS]
        if unknown:
            raise InputError(f"--format {unknown[0]!r}: choose from {', '.join(FORMATS)}")
        if self.fixed_batch is not None and self.fixed_batch < 1:
            raise InputError(f"--fixed-batch {self.fixed_batch}: give a positive size")
        if self.runtime_version is not None:
            parse_runtime_version(self.runtime_version)  # a typo fails before the export's work


@dataclass
class ExportResult:
    out: Path
    files: dict[str, Path]
    horner_nodes: list[int]
    refusals: list[str]
    op_counts: dict[str, int]
    notes: dict[str, str] = field(default_factory=dict)
    check: ValidationReport | None = None  # the export's own cpu parity check (self_check)


def _guard(poly: Poly) -> None:
    """Guard a calibrated polynomial: its range widened by ``GUARD_MARGIN`` of its span."""
    pad = GUARD_MARGIN * np.maximum(poly.hi - poly.lo, 1e-6)
    poly.lo, poly.hi, poly.guard = poly.lo - pad, poly.hi + pad, True


def lower(ckpt: Checkpoint, options: ExportOptions, calib_x: np.ndarray) -> tuple[list, list[str]]:
    """The checkpoint's stages, guarded and folded as ``options`` ask."""
    stages = stages_from_checkpoint(ckpt)
    calibrate_ranges(ckpt, calib_x, stages)
    if options.domain_guard:
        for poly in stages:
            if isinstance(poly, Poly):
                _guard(poly)
    if not options.fold:
        return stages, []
    result = run_passes(stages, CLIP_GUARD_PASSES if options.clip_guard else DEFAULT_PASSES)
    return result.stages, result.refusals


@holds_out("export")
def export(checkpoint: Path, out: Path, options: ExportOptions = ExportOptions()) -> ExportResult:
    """Export ``checkpoint`` into the folder ``out``."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out}: exists and is a file; give a folder")
    ckpt = load_checkpoint(checkpoint)
    calib = ckpt.calib()
    if "x" not in calib or not np.isfinite(calib["x"]).all():
        raise NonFiniteError(f"{checkpoint}/calib.npz: array 'x' is missing or not finite")
    stages, refusals = lower(ckpt, options, calib["x"])
    example = torch.from_numpy(calib["x"][: options.fixed_batch or 2].copy())
    if example.shape[0] < (options.fixed_batch or 2):
        raise InputError(
            f"--fixed-batch {options.fixed_batch}: calib.npz holds only {example.shape[0]} samples"
        )
    primal = PrimalNet(stages, sensitivity=options.sensitivity)
    outputs = list(OUTPUTS[ckpt.task]) + (["sensitivity"] if options.sensitivity else [])
    model = onnx_export.to_onnx(
        primal, (example,), ["x"], outputs, options.opset, options.fixed_batch
    )
    # The folds leave each polynomial's range in its own (unshifted) coordinates.
    polys = [s for s in stages if isinstance(s, Poly)]
    guard = [(p.lo, p.hi) for p in polys] if options.domain_guard else None
    ref_net = ReferenceNet(ckpt, guard)
    oracle = build_oracle(ref_net, reference_inputs(calib, vocab=ckpt.net_config.vocab))
    meta = metadata(ckpt, options, stages, refusals, primal, calib["x"])
    write_props_(model, meta, producer=PRODUCER)
    check_model(model, options.runtime_version, options.formats)  # before anything is written
    onnx_export.check(model, str(out / "model.onnx"))
    files = {"onnx": out / "model.onnx"}
    onnx_export.save(model, files["onnx"])
    if options.companion:
        jvp = onnx_export.to_onnx(
            JvpNet(stages),
            (example, direction_example(ckpt, example)),
            ["x", "v"],
            ["y", "jvp"],
            options.opset,
            options.fixed_batch,
        )
        write_props_(jvp, {**meta, **props(role=COMPANION_ROLE)}, producer=PRODUCER)
        onnx_export.check(jvp, str(out / "model.jvp.onnx"))
        files["jvp"] = out / "model.jvp.onnx"
        onnx_export.save(jvp, files["jvp"])
    files.update(_mobile_formats(options, out, files, ckpt, stages, example))
    files["ref"] = out / "model.ref.npz"
    save_oracle(files["ref"], oracle, calib)
    report, failed = check_export(out, files)
    result = ExportResult(
        out,
        files,
        [p.horner_nodes() for p in polys],
        refusals,
        onnx_export.op_counts(model),
        check=report,
    )
    if failed:
        raise SelfCheckFailed(failure_message(out, report, failed), result)
    return result


def direction_example(ckpt: Checkpoint, x: torch.Tensor) -> torch.Tensor:
    """A direction ``v`` for the companion: shaped like ``x``, or for text like the pooled
    embedding (ids are discrete; derivatives are taken where the values become continuous)."""
    if ckpt.tokenizer is None:
        return torch.ones_like(x)
    return torch.ones(x.shape[0], ckpt.net_config.embed_dim)


def _mobile_formats(options, out, files, ckpt, stages, example) -> dict[str, Path]:
    made: dict[str, Path] = {}
    if "ort" in options.formats:
        from cr_edge.export.mobile import convert_to_ort

        made.update(convert_to_ort(files["onnx"], files.get("jvp")))
    if "executorch" in options.formats:
        from cr_edge.export.pte import export_floor, export_pte

        primal = PrimalNet(stages)
        if options.int8:
            pte = int8_program(ckpt, options, out / "model.pte", example)
        else:
            pte = export_pte(primal, example, out / "model.pte", False, options.fixed_batch)
        made["pte"], made["pte_info"] = pte.path, pte.info_path
        floor = export_floor(primal, example, pte.path, options.fixed_batch)
        made["pte_floor"], made["pte_floor_info"] = floor.path, floor.info_path
    return made


def int8_program(
    ckpt: Checkpoint,
    options: ExportOptions,
    path: Path,
    example: torch.Tensor,
    calibration: np.ndarray | None = None,
    scheme: str = "dynamic",
):
    """The PT2E int8 ExecuTorch program of ``ckpt`` at ``path`` (and its sidecar).

    Unfolded: the normalisation and leading-coefficient folds scale weight columns by up
    to 1/std and a_n, which per-output-channel int8 weights cannot resolve: only the folds
    they survive run (``int8_stages``), the guard's among them, so the program clips where
    the shipped model does. Calibrated on ``calibration`` (default: the checkpoint's own
    calibration inputs).
    """
    from cr_edge.export.pte import export_pte

    x = ckpt.calib()["x"] if calibration is None else calibration
    stages, _ = lower(ckpt, replace(options, fold=False), ckpt.calib()["x"])
    stages = int8_stages(stages, tuple(ckpt.net_config.input_shape), options.clip_guard)
    samples = torch.from_numpy(np.ascontiguousarray(x))
    primal = int8_net(stages)
    return export_pte(primal, example, path, True, options.fixed_batch, samples, scheme)


def export_int8_pte(
    checkpoint: Path, path: Path, calibration: np.ndarray | None = None, scheme: str = "dynamic"
):
    """``int8_program`` from a checkpoint folder, dynamic batch: what the pipeline ships.

    The pipeline calibrates it on the oracle's inputs, as ``quantize`` does without ``--calib``.
    Its dispatch floor (``export_floor``) goes beside it, as beside every exported ``.pte``.
    """
    from cr_edge.export.pte import export_floor

    ckpt = load_checkpoint(checkpoint)
    example = torch.from_numpy(ckpt.calib()["x"][:2].copy())
    pte = int8_program(ckpt, ExportOptions(), Path(path), example, calibration, scheme)
    stages, _ = lower(ckpt, ExportOptions(), ckpt.calib()["x"])
    export_floor(PrimalNet(stages), example, pte.path, None)  # outputs' shapes only
    return pte


def metadata(
    ckpt: Checkpoint,
    options: ExportOptions,
    stages: list,
    refusals: list[str],
    primal: PrimalNet,
    calib_x: np.ndarray,
) -> dict[str, str]:
    """``metadata_props``: what the file is, enough to use it without the checkpoint."""
    cfg = ckpt.net_config
    polys = [s for s in stages if isinstance(s, Poly)]
    # a degree only where polynomials are what the file runs (not a refolded baseline)
    poly_net = cfg.activation == "poly" and not (activation_stages(stages) and not polys)
    meta = ModelMetadata(
        schema=SCHEMA_VERSION,
        version=__version__,
        precision="fp32",
        arch=cfg.arch,
        activation=cfg.activation,
        degree=cfg.degree if poly_net else None,
        hidden=list(cfg.hidden),
        dreg_lambda=ckpt.recipe.dreg_lambda,
        input_shape=list(cfg.input_shape),
        normalisation=ckpt.normalisation.to_json() if ckpt.normalisation is not None else None,
        labels=ckpt.label_names,
        task=ckpt.task,
        outputs=OUTPUTS[ckpt.task],
        target_normalisation=(
            ckpt.target_scale.to_json() if ckpt.target_scale is not None else None
        ),
        export_options=asdict(options),
        horner_nodes=[p.horner_nodes() for p in polys],
        folds=[
            {
                "monic": p.monic,
                "constant": p.constant_folded,
                "shift": p.shifted,
                "unit_guard": p.unit,
            }
            for p in polys
        ],
        fold_refusals=refusals,
    )
    if ckpt.tokenizer is not None:
        meta = replace(
            meta,
            tokenizer=ckpt.tokenizer.to_json(),
            derivative_input="pooled embedding (batch, embed_dim): v of the companion",
        )
    if options.domain_guard:
        meta = replace(
            meta,
            domain_guard=[
                {"lo": p.lo.round(6).tolist(), "hi": p.hi.round(6).tolist()} for p in polys
            ],
            domain_guard_margin=GUARD_MARGIN,
        )
    if options.sensitivity:
        with torch.no_grad():
            sens = primal(torch.from_numpy(calib_x))[-1]
        p50, p99 = np.percentile(sens.numpy(), [50, 99])
        meta = replace(
            meta, sensitivity_p50=float(f"{p50:.6g}"), sensitivity_p99=float(f"{p99:.6g}")
        )
    return meta.to_props()
