"""``cr-edge pipeline``: train -> export -> quantize -> validate -> profile, one run folder.

Every step writes its own sub-folder with atomic files, so an interrupted run
leaves the finished steps complete and nothing half-written; ``summary.json``
and ``summary.md`` come last and say what every step measured. An export that fails its
own cpu parity check stops the run there (exit 1), the summary saying so. ``--runtime``
decides every step: export and quantize write only the formats those runtimes run
(.ort for ort-mobile, .pte for executorch-xnnpack), and validate and profile run only
those runtimes; both open the models in the sandbox child first, as for the CLI.

With ExecuTorch, the quantize step also writes ``quantized/model.a8w8.pte``: the PT2E
int8 program (Linear/Conv quantized, the polynomial chain float), validated like the
rest against the same oracle at its own (int8) tolerances.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from cr_edge.artifacts import atomic
from cr_edge.artifacts.folder_lock import holds_out, writing
from cr_edge.artifacts.manifest import is_incomplete, write_manifest
from cr_edge.artifacts.npz import read_npz
from cr_edge.errors import CheckFailed, ExportError, InputError
from cr_edge.export.exporter import ExportOptions, export, export_int8_pte
from cr_edge.export.self_check import SelfCheckFailed
from cr_edge.profile.profiler import ProfileOptions, profile
from cr_edge.quantize.policy import QuantConfig, QuantPolicy
from cr_edge.quantize.quantizer import quantize
from cr_edge.recipe import Recipe
from cr_edge.runtimes.executorch import floor_of, sidecar_of
from cr_edge.runtimes.registry import parse_runtimes
from cr_edge.train.loop import train
from cr_edge.validate.outcome import UNAVAILABLE
from cr_edge.validate.validator import RuntimeResult, ValidationReport, validate

# The main job's steps, in order. ("Stages" in cr_edge.export are a net's deploy-time layers.)
STEPS = ("train", "export", "quantize", "validate", "profile")
SUMMARY = "summary.json"
DEVICE_PROFILES = "profile.devices.json"  # pipeline --on: each device's profile
INT8_PTE = "model.a8w8.pte"  # int8 activations (static, per tensor) and int8 weights


@dataclass
class PipelineResult:
    out: Path
    summary: dict
    failures: list[str] = field(default_factory=list)


def executorch_installed() -> bool:
    return importlib.util.find_spec("executorch") is not None


def export_formats(runtimes: str) -> tuple[str, ...]:
    """The export formats the named runtimes run: .onnx always, .ort and .pte when asked for."""
    names = {r.name for r in parse_runtimes(runtimes)}
    formats = ["onnx"]
    if "ort-mobile" in names:
        formats.append("ort")
    if "executorch-xnnpack" in names and executorch_installed():
        formats.append("executorch")
    return tuple(formats)


@holds_out("pipeline")
def run_pipeline(
    recipe: Recipe,
    out: Path,
    runtimes: str = "all",
    force: bool = False,
    profile_iters: int = 300,
    on_step: Callable[[str], None] | None = None,
    certify_on: str | list[str] | None = None,
    on: str | list[str] | None = None,
) -> PipelineResult:
    """Run every step for ``recipe`` into ``out``; failed checks are collected, not hidden.

    ``certify_on``: devices quantize's choice must pass on too (``auto``: the emulated ARM64
    device where it can be built); the best candidate that passes everywhere is kept.
    ``on``: devices that validate and profile the models as well (``validate --on``)."""
    from cr_edge.devices import launch

    out = Path(out)
    if (out / SUMMARY).exists() and not force and not is_incomplete(out):
        raise InputError(f"--out {out}: already holds a pipeline run; pass --force to overwrite")
    devices = launch.parse_names(on)  # an unknown name fails before any training
    step = on_step or (lambda _: None)
    step("train")
    trained = train(recipe, out / "checkpoint", device="cpu")
    step("export")
    formats = export_formats(runtimes)
    try:
        exported = export(out / "checkpoint", out / "export", ExportOptions(formats=formats))
    except SelfCheckFailed as e:  # nothing downstream of a wrong model is worth measuring
        return _stopped(recipe, out, trained.metrics, e)
    step("quantize")
    failures: list[str] = []
    models = [exported.files["onnx"]]
    text = trained.net.config.arch == "text"
    quant = _quantized(exported.files["onnx"], out, formats, models, failures, certify_on)
    int8_pte, int8_rows = None, []
    if "executorch" in formats and not text:
        int8_pte, int8_rows = _int8_program(out, exported.files["ref"])
    step("validate")
    # Each runtime runs its own sibling of a model (model.ort, model.pte): name the .onnx only.
    report = _validated(models, runtimes, devices)
    report = replace(report, results=report.results + int8_rows)  # the int8 .pte, above
    atomic.write_json(out / "validate.json", report.to_json())
    failures += report.failures()
    step("profile")
    options = ProfileOptions(
        runtimes=runtimes, batches=(1,), warmup=20, iters=profile_iters, memory=False
    )
    if int8_rows:
        models.append(Path(int8_rows[0].artifact))
    profiles = [profile([m], options) for m in models]
    atomic.write_json(out / "profile.json", [p.to_json() for p in profiles])
    written = ["validate.json", "profile.json", "summary.md", SUMMARY]
    if devices:
        atomic.write_json(out / DEVICE_PROFILES, _profiled_on(devices, models, runtimes, options))
        written.append(DEVICE_PROFILES)
    summary = _summary(recipe, trained.metrics, exported.files, quant, report, profiles, failures)
    summary["executorch_int8"] = int8_pte
    atomic.write_text(out / "summary.md", summary_markdown(summary))
    atomic.write_json(out / SUMMARY, summary)
    write_manifest(out, written)
    return PipelineResult(out, summary, failures)


def _validated(models: list[Path], runtimes: str, devices: list) -> ValidationReport:
    """The validate step here, and on ``devices`` at the same time (rows ``RUNTIME@NAME``)."""
    if not devices:
        return validate(models, runtimes)
    from cr_edge.devices import commands, launch

    argv = launch.validate_argv(runtimes, "auto")
    return commands.validate_on(devices, models, argv, None, lambda: validate(models, runtimes))


def _profiled_on(devices: list, models: list[Path], runtimes: str, options: ProfileOptions) -> dict:
    """Each device profiles the models after this machine has: ``profile --on``'s JSON."""
    from cr_edge.devices import commands, launch

    argv = launch.profile_argv(
        runtimes, options.batches, None, options.warmup, options.iters, None, False, False, True
    )
    return commands.profile_json(commands.profile_on(devices, models, argv))


def _quantized(
    model: Path,
    out: Path,
    formats: tuple[str, ...],
    models: list[Path],
    failures: list[str],
    certify_on: str | list[str] | None = None,
) -> dict:
    """The quantize step: auto's choice (appended to ``models``) or why fp32 stays.

    Certified on ``certify_on`` best first, stopping at the first candidate that passes
    everywhere (``devices.certify``): one emulated validation per candidate tried."""
    from cr_edge.devices.certify import certifier, summary_entry

    quant: dict = {}
    hook, note = certifier(certify_on, first_only=True) if certify_on else (None, "")
    try:
        config = QuantConfig(
            out / "quantized", QuantPolicy(mode="auto"), ort_format="ort" in formats
        )
        q = quantize(model, config, hook)
        quant = {"precision": "fp32", "policy": None, "label": None, "note": q.notes[-1]}
        if q.chosen is not None:
            models.append(q.files["onnx"])
            quant = {
                "precision": q.chosen.policy.precision,
                "policy": q.chosen.policy.tag,
                "label": q.chosen.policy.label,
                "accuracy": q.chosen.accuracy,
                "fp32_accuracy": q.fp32_accuracy,
                "file": q.files["onnx"].name,
            }
        if certify_on:
            quant["certified"] = summary_entry(q, note)
    except CheckFailed as e:
        failures.append(f"quantize: {e}")
    return quant


def _int8_program(out: Path, oracle: Path) -> tuple[dict, list[RuntimeResult]]:
    """``quantized/model.a8w8.pte`` (and sidecar), kept only if it passes its int8 validation.

    Calibrated on the oracle's inputs, as ``quantize`` is without ``--calib``; the oracle
    is the export's (``quantize`` copies it too, unless auto kept fp32). As auto does for
    ONNX, a program that fails is not shipped: it is removed and the summary says why.
    Returns the summary's entry and the program's validation rows.
    """
    folder = out / "quantized"
    path = folder / INT8_PTE
    x = read_npz(oracle, ("x",))["x"]
    with writing(folder, "quantize"):
        try:
            pte = export_int8_pte(out / "checkpoint", path, x)
        except ExportError as e:  # the fp32 program stands; say why there is no int8 one
            _remove(folder, _program_files(path))
            return {"file": INT8_PTE, "bytes": None, "kept": False, "note": f"not written: {e}"}, []
        ref = folder / oracle.name
        if not ref.is_file():
            atomic.write_bytes(ref, oracle.read_bytes())
        write_manifest(folder, [*_program_files(pte.path), ref])
    checked = validate([path], "executorch-xnnpack")
    entry = {"file": INT8_PTE, "bytes": path.stat().st_size, "kept": checked.passed}
    if checked.passed:
        return entry, checked.results
    with writing(folder, "quantize"):
        _remove(folder, _program_files(path))
    entry["note"] = f"not kept: {checked.failures()[0]}"
    return entry, []


def _program_files(pte: Path) -> list[Path]:
    """A ``.pte``, its sidecar, and its dispatch floor (``export_floor``) with the floor's."""
    return [pte, sidecar_of(pte), floor_of(pte), sidecar_of(floor_of(pte))]


def _remove(folder: Path, files: list[Path]) -> None:
    """Delete ``files`` and drop their manifest entries (the caller holds the folder's lock)."""
    for file in files:
        file.unlink(missing_ok=True)
    write_manifest(folder, [])


def _stopped(recipe: Recipe, out: Path, metrics: dict, failed: SelfCheckFailed) -> PipelineResult:
    """The run after an export that failed its own check: summary and verdict, no later step."""
    failures = [f"export: {failed}; stopped before quantize, validate and profile"]
    result = failed.result
    summary = _summary(recipe, metrics, result.files, {}, result.check, [], failures)
    atomic.write_text(out / "summary.md", summary_markdown(summary))
    atomic.write_json(out / SUMMARY, summary)
    write_manifest(out, ["summary.md", SUMMARY])
    return PipelineResult(out, summary, failures)


def _summary(recipe, metrics, files, quant, report, profiles, failures) -> dict:
    verdicts: dict[str, dict[str, str]] = {}
    for r in report.results:
        if r.outputs.status == UNAVAILABLE and r.derivatives.status == UNAVAILABLE:
            continue  # the reason stays in validate.json
        verdicts.setdefault(Path(r.artifact).name, {})[r.runtime] = (
            f"{r.outputs.status}/{r.derivatives.status}"
        )
    latency = {
        f"{Path(row.file).name} [{row.runtime}]": row.latency["p50_ms"] * 1e3
        for prof in profiles
        for row in prof.rows
    }
    return {
        "recipe": recipe.to_json(),
        "parameters": metrics["parameters"],
        "task": recipe.task,
        "fp32_accuracy": metrics.get("test_accuracy"),  # None for regression
        "test_metrics": {k[5:]: v for k, v in metrics.items() if k.startswith("test_")},
        "quantized": quant or None,
        "files": {
            name: path.stat().st_size
            for name, path in {p.name: p for p in _all_files(files, quant, report)}.items()
        },
        "parity": verdicts,
        "p50_latency_us": latency,
        "skipped_runtimes": [s for prof in profiles for s in prof.skipped],
        "failures": failures,
        "passed": not failures,
    }


def _all_files(files: dict[str, Path], quant: dict, report) -> list[Path]:
    paths = [p for p in files.values() if p.is_file()]
    paths += [Path(r.artifact) for r in report.results if Path(r.artifact).is_file()]
    return sorted(set(paths))


def summary_markdown(s: dict) -> str:
    lines = [
        f"# cr-edge pipeline: {s['recipe']['name']}",
        "",
        f"- parameters: {s['parameters']}",
        f"- task: {s['task']}",
        "- test fp32: " + ", ".join(f"{k} {v:.4f}" for k, v in s["test_metrics"].items()),
    ]
    q = s["quantized"]
    if q and q["policy"] and q["accuracy"] is None:  # regression: parity is the measure
        lines.append(f"- quantized to {q['policy']} ({q['label']})")
    elif q and q["policy"]:
        lines.append(
            f"- quantized to {q['policy']} ({q['label']}): accuracy {q['accuracy']:.4f} "
            f"(fp32 through ONNX Runtime {q['fp32_accuracy']:.4f})"
        )
    elif q:
        lines.append(f"- quantized: {q['note']}")
    if q and "certified" in q:
        from cr_edge.devices.certify import summary_lines

        lines += summary_lines(q["certified"])
    pte = s.get("executorch_int8")
    if pte:
        size = "" if pte["bytes"] is None else f", {pte['bytes']:,} B"
        kept = "" if pte["kept"] else f" {pte['note']}"
        lines.append(
            f"- ExecuTorch int8 program {pte['file']}{size} (PT2E: Linear/Conv "
            f"int8, the polynomial chain float){kept}"
        )
    lines += ["", "| file | bytes |", "|---|---|"]
    lines += [f"| {name} | {size:,} |" for name, size in s["files"].items()]
    lines += ["", "| artifact | runtime | outputs/derivatives |", "|---|---|---|"]
    for artifact, per in s["parity"].items():
        lines += [f"| {artifact} | {rt} | {v} |" for rt, v in per.items()]
    lines += ["", "| artifact [runtime] | p50 latency (µs, batch 1) |", "|---|---|"]
    lines += [f"| {k} | {v:.1f} |" for k, v in s["p50_latency_us"].items()]
    lines += ["", verdict(s)]
    return "\n".join(lines) + "\n"


def verdict(s: dict) -> str:
    """The run in one line: PASS, or FAIL and every failed check."""
    return "verdict: " + ("PASS" if s["passed"] else "FAIL: " + "; ".join(s["failures"]))


def raise_for_failures(result: PipelineResult) -> None:
    if result.failures:
        more = f" (and {len(result.failures) - 1} more)" if len(result.failures) > 1 else ""
        raise CheckFailed(f"pipeline: {result.failures[0]}{more}; see {result.out / 'summary.md'}")
