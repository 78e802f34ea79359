"""Export's last step: the model it wrote, checked against the oracle it wrote.

An export that says done must be one that ``validate`` passes: otherwise a user learns
of a broken model (a wrong fold, a coefficient that a float32 Horner chain cannot
evaluate) only when something downstream fails. So the export runs ``validate``'s own
cpu rows (``cr_edge.validate.validator.cpu_parity``: outputs and derivatives, the
tolerances derived from the graph's measured float64 rounding, the derivatives' too, each
with its policy value as a floor) and records the verdict, and where each bound came from,
in the folder's manifest.
A failed export keeps its files for inspection; ``validate`` and ``quantize`` refuse
it unless forced (``cr_edge.artifacts.manifest.refuse_failed_export``).
"""

from __future__ import annotations

from pathlib import Path

from cr_edge.artifacts.manifest import CHECK_FAILED, CHECK_PASSED, reading_back, write_manifest
from cr_edge.errors import CheckFailed
from cr_edge.validate.validator import ValidationReport, cpu_parity


class SelfCheckFailed(CheckFailed):
    """The export was written but fails its own cpu parity check (exit 1); ``result`` has it all."""

    def __init__(self, message: str, result: object) -> None:
        super().__init__(message)
        self.result = result


def check_export(out: Path, files: dict[str, Path]) -> tuple[ValidationReport, list[str]]:
    """Run cpu parity on the model in ``out``, then write the manifest with the verdict.

    Returns the report and the failed checks (outputs, derivatives, companion's own y).
    The folder stays marked as being written until then, so an export killed during its
    check is incomplete, and rerunning it rewrites it.
    """
    with reading_back(out):
        report = cpu_parity(files["onnx"])
    failed = [name for row in report.results for name in row.failed_parity()]
    verdict = {"state": CHECK_FAILED if failed else CHECK_PASSED, "runtime": "cpu"}
    # where each bound came from: the graph's measured float64 rounding or the policy floor
    tolerances = [row.tolerances for row in report.results if row.tolerances is not None]
    if tolerances:
        verdict["tolerances"] = tolerances[0].sources
    if failed:
        verdict.update(failed=failed, failures=report.failures())
    write_manifest(out, files.values(), verdict)
    return report, failed


def failure_message(out: Path, report: ValidationReport, failed: list[str]) -> str:
    """One line: which checks failed, the first failure's figures, where the files are."""
    first = next(iter(report.failures()), "")
    return (
        f"{out}: the export failed its own cpu parity check ({', '.join(failed)}): {first}; "
        "the files stay for inspection (validate --force shows every check)"
    )
