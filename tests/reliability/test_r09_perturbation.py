"""Row 9: an export that differs from PyTorch fails validate — every single-coefficient nudge.

Each Horner coefficient initializer element of the exported model is changed by 1%
on its own; ``validate`` against the untouched PyTorch oracle must fail (exit 1
through the CLI) and list the failing output, for 100% of them. The loop makes
validate's cpu rows (``cpu_parity``: the same comparisons and tolerances, by finite
differences since the copy has no companion) without opening each of the 64 files in
the sandbox child first, which cost 0.8 s apiece and is not what this row tests.
"""

from __future__ import annotations

from cr_edge.validate.validator import cpu_parity
from reliability.helpers import one_line_error, run
from reliability.perturb import perturbed_models


def test_every_single_coefficient_perturbation_is_caught(exported, tmp_path):
    missed, tried = [], 0
    for what, model in perturbed_models(exported, tmp_path):
        tried += 1
        report = cpu_parity(model)
        if report.passed or not any("outputs" in line for line in report.failures()):
            missed.append(what)
    print(f"row 9: {tried - len(missed)}/{tried} single-coefficient perturbations caught")
    assert tried >= 2 and not missed, missed


def test_the_cli_fails_with_exit_1_and_lists_the_failing_output(exported, tmp_path):
    _, model = next(perturbed_models(exported, tmp_path))
    result = run("validate", model, "--runtime", "cpu")
    assert result.exit_code == 1, result.output
    assert "[cpu] outputs: y" in one_line_error(result)
