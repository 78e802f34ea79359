"""``validate``: every artifact x every runtime -> outputs, derivatives, coverage.

The proof that what runs on the device is the model that was trained. For each
artifact the oracle is found and checked once; each runtime then loads the file it
runs (the artifact, or its ``.ort``/``.pte`` sibling), is compared with the oracle on
outputs and on derivatives, and reports where its nodes went. A runtime that cannot
run here is UNAVAILABLE with its reason — not a failure, and not a silent pass
either: an artifact that nothing could check is an error of its own.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort

from cr_edge import __version__
from cr_edge.errors import CheckFailed, InputError
from cr_edge.runtimes.ort import OrtRuntime
from cr_edge.runtimes.registry import parse_runtimes
from cr_edge.runtimes.runtime import RunError, Runtime, Session, Unavailable
from cr_edge.runtimes.safe_load import (
    Artifact,
    check_artifact,
    companion_of,
    is_companion,
    oracle_path,
    sibling,
)
from cr_edge.runtimes.sandbox import sandboxed_load
from cr_edge.validate import coverage, rounding
from cr_edge.validate.oracle import Oracle, check_against, load_oracle
from cr_edge.validate.outcome import (
    COMPANION,
    COMPANION_Y,
    DERIVATIVE_METHODS,
    FAIL,
    FINITE_DIFFERENCES,
    UNAVAILABLE,
    Outcome,
)
from cr_edge.validate.parity import derivative_parity, output_parity
from cr_edge.validate.rounding import RoundingError
from cr_edge.validate.tolerances import Overrides, Tolerances, precision_of, tolerances_for

COLUMNS = ("outputs", "derivatives", "coverage")


@dataclass(frozen=True)
class RuntimeResult:
    """One row of the report: one artifact on one runtime."""

    artifact: str
    runtime: str
    loaded: str | None  # the file the runtime loaded (the artifact or a sibling)
    outputs: Outcome
    derivatives: Outcome
    coverage: Outcome
    tolerances: Tolerances | None = None

    def outcomes(self) -> dict[str, Outcome]:
        return {c: getattr(self, c) for c in COLUMNS}

    def failed_parity(self) -> list[str]:
        """The parity checks that failed, as messages name them: outputs, derivatives, or
        the companion's own y (judged at the output tolerance, beside the JVPs)."""
        names = ["outputs"] if self.outputs.status == FAIL else []
        if self.derivatives.status == FAIL:
            failed = {c.name for c in self.derivatives.checks if not c.passed}
            if failed - {COMPANION_Y} or not failed:
                names.append("derivatives")
            if COMPANION_Y in failed:
                names.append(COMPANION_Y)
        return names

    def to_json(self) -> dict:
        return {
            "artifact": self.artifact,
            "runtime": self.runtime,
            "loaded": self.loaded,
            "tolerances": self.tolerances.to_json() if self.tolerances else None,
            **{c: o.to_json() for c, o in self.outcomes().items()},
        }


@dataclass(frozen=True)
class ValidationReport:
    """Every row, plus the verdict a CI pipeline acts on."""

    results: list[RuntimeResult] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failures()

    def failures(self) -> list[str]:
        """One line per failing check (name, shape, errors, tolerance), over the whole report."""
        lines = []
        for r in self.results:
            for column, outcome in r.outcomes().items():
                if outcome.status != FAIL:
                    continue
                where = f"{r.loaded or r.artifact} [{r.runtime}] {column}"
                failed = [c.describe() for c in outcome.checks if not c.passed]
                lines += [f"{where}: {text}" for text in failed or [outcome.summary]]
        return lines

    def unchecked(self) -> list[str]:
        """Artifacts on which every requested runtime was unavailable for every column."""
        seen: dict[str, bool] = {}
        for r in self.results:
            ran = any(o.status != UNAVAILABLE for o in r.outcomes().values())
            seen[r.artifact] = seen.get(r.artifact, False) or ran
        return [a for a, ran in seen.items() if not ran]

    def raise_for_status(self) -> None:
        """``CheckFailed`` (exit 1) listing every failure; ``InputError`` if nothing was checked."""
        failures = self.failures()
        if failures:
            more = f" (and {len(failures) - 1} more)" if len(failures) > 1 else ""
            raise CheckFailed(f"{len(failures)} check(s) failed: {failures[0]}{more}")
        unchecked = self.unchecked()
        if unchecked:
            raise InputError(
                f"{', '.join(unchecked)}: no requested runtime could check it here; "
                "see the reasons in the table or ask for --runtime all"
            )

    def to_json(self) -> dict:
        return {
            "cr_edge": __version__,
            "onnxruntime": ort.__version__,
            "passed": self.passed,
            "results": [r.to_json() for r in self.results],
        }


def validate(
    artifacts: list[Path],
    runtimes: list[str] | str = "all",
    ref: Path | None = None,
    overrides: Overrides | None = None,
    derivatives: str = "auto",
) -> ValidationReport:
    """Validate each artifact on each runtime against its oracle; bad input raises ``InputError``.

    ``derivatives``: "auto" uses the companion graph when it exists and finite
    differences otherwise; "companion" or "finite-differences" forces one method.
    """
    if derivatives not in DERIVATIVE_METHODS:
        raise InputError(f"unknown derivative method {derivatives!r}; choose {DERIVATIVE_METHODS}")
    chosen = parse_runtimes(runtimes)
    if not artifacts:
        raise InputError("no artifact given")
    results = []
    for path in map(Path, artifacts):
        if is_companion(path):
            raise InputError(f"{path}: a derivative companion; validate its primal model instead")
        sandboxed_load(path)  # a crash inside onnxruntime becomes an error, not a signal
        results += _rows(path, chosen, ref, overrides, derivatives)
    return ValidationReport(results)


def cpu_parity(model: Path) -> ValidationReport:
    """Outputs and derivatives of a model this process has just written, on the CPU EP.

    Export's last step (``cr_edge.export.self_check``): the same rows ``validate`` makes
    for ``--runtime cpu``, without the sandboxed child, which guards against untrusted
    files and costs a Python start-up (~0.8 s) on every export; this file is the
    exporter's own, already checked by ``onnx.checker``.
    """
    return ValidationReport(_rows(Path(model), parse_runtimes("cpu"), None, None, "auto"))


def _rows(
    path: Path,
    runtimes: list[Runtime],
    ref: Path | None,
    overrides: Overrides | None,
    derivatives: str,
) -> list[RuntimeResult]:
    artifact = check_artifact(path)
    oracle = load_oracle(oracle_path(path, ref))
    rounding = fp32_rounding(artifact, oracle)
    return [
        _on_runtime(artifact, oracle, runtime, overrides, derivatives, rounding)
        for runtime in runtimes
    ]


def fp32_rounding(artifact: Artifact, oracle: Oracle) -> RoundingError | None:
    """The float32 rounding error of the artifact's ONNX graph (and companion) on the oracle.

    ``.ort`` and ``.pte`` files are judged by the ``.onnx`` they were made from. None when
    there is no fp32 ONNX graph beside the artifact, or its float64 copy cannot run here.
    """
    path = artifact.path if artifact.kind == "onnx" else sibling(artifact.path, ".onnx")
    if not path.is_file() or oracle.x.dtype != np.float32:
        return None
    try:  # a damaged sibling or companion is reported by the runtimes that load it
        graph = artifact if path == artifact.path else check_artifact(path)
        companion = companion_of(path)
        companion_data = check_artifact(companion).data if companion.is_file() else None
    except InputError:
        return None
    metadata = {p.key: p.value for p in graph.model.metadata_props} if graph.model else {}
    if graph.model is None or precision_of(metadata, str(path)) != "fp32":
        return None
    try:
        return rounding.measure(graph.data, companion_data, oracle.x, oracle.v)
    except Exception:  # onnxruntime's error types, as in runtimes.ort: no float64 kernel here
        return None


def _on_runtime(
    artifact: Artifact,
    oracle: Oracle,
    runtime: Runtime,
    overrides: Overrides | None,
    method: str,
    rounding_error: RoundingError | None = None,
) -> RuntimeResult:
    name = str(artifact.path)
    try:
        ok, why = runtime.available()
        if not ok:
            raise Unavailable(why)
        loadable = _checked(runtime.loadable(artifact.path), artifact)
        session = runtime.load(loadable)
    except Unavailable as e:
        off = Outcome.unavailable(str(e))
        return RuntimeResult(name, runtime.name, None, off, off, _static(artifact, runtime, off))
    x = check_against(oracle, session.inputs, loadable.path)
    tol = tolerances_for(
        session.metadata,
        str(loadable.path),
        oracle.y,
        oracle.jvp_per_unit(),
        overrides,
        rounding_error,
        oracle.own_error(),
    )
    return RuntimeResult(
        name,
        runtime.name,
        str(loadable.path),
        output_parity(session, x, oracle, tol),
        _derivatives(runtime, loadable, session, x, oracle, tol, method),
        _session_coverage(runtime, loadable, session, {session.input_names[0]: x}),
        tol,
    )


def _derivatives(
    runtime: Runtime,
    loaded: Artifact,
    session: Session,
    x,
    oracle: Oracle,
    tol: Tolerances,
    method: str,
) -> Outcome:
    path = companion_of(loaded.path)
    if method == FINITE_DIFFERENCES or (method == "auto" and not path.is_file()):
        return derivative_parity(session, None, x, oracle, tol, FINITE_DIFFERENCES)
    if not path.is_file():
        return Outcome.unavailable(f"no derivative companion {path.name} beside {loaded.path.name}")
    try:
        companion = runtime.load(check_artifact(path))
    except Unavailable as e:
        return Outcome.unavailable(str(e))
    if companion.input_names[:2] != ["x", "v"] or len(companion.outputs) < 2:
        raise InputError(
            f"{path}: a derivative companion needs inputs (x, v) and outputs (y, jvp); it has "
            f"inputs {companion.input_names} and outputs {companion.output_names}"
        )
    return derivative_parity(session, companion, x, oracle, tol, COMPANION)


def _session_coverage(runtime: Runtime, loaded: Artifact, session: Session, feeds: dict) -> Outcome:
    if not isinstance(runtime, OrtRuntime):
        return Outcome.unavailable(f"{runtime.name} reports no per-node placement")
    try:
        placement = runtime.placement(loaded, session, feeds)
    except RunError as e:
        return Outcome(FAIL, f"profiled run failed: {e}")
    except Unavailable as e:
        return Outcome.unavailable(str(e))
    graph = coverage.graph_nodes(loaded)
    parts = [coverage.session_coverage(placement, graph, runtime.provider)]
    return coverage.coverage_outcome(parts, coverage.horner_nodes(graph))


def _static(artifact: Artifact, runtime: Runtime, unavailable: Outcome) -> Outcome:
    """Coverage for an EP that cannot run here: the usability checker's estimate, if it has one."""
    if runtime.name not in coverage.STATIC_EPS:
        return unavailable
    onnx_path = sibling(artifact.path, ".onnx")
    if artifact.model is not None:
        source = artifact
    elif onnx_path.is_file():
        source = check_artifact(onnx_path)
    else:
        return Outcome.unavailable(f"static coverage reads the ONNX graph; no {onnx_path.name}")
    horner = coverage.horner_nodes(coverage.graph_nodes(source))
    return coverage.static_outcome(source.model, runtime.name, horner)


def _checked(path: Path, artifact: Artifact) -> Artifact:
    return artifact if path == artifact.path else check_artifact(path)
