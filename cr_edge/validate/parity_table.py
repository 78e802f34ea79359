"""The validation report as a rich table: runtime x {outputs, derivatives, coverage}.

Each cell shows the status and its headline figures (or the reason a runtime is
unavailable); every failing check follows the table on a line of its own.
"""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from cr_edge.validate.outcome import FAIL, PASS, Outcome
from cr_edge.validate.validator import COLUMNS, RuntimeResult, ValidationReport

STYLES = {PASS: "green", FAIL: "bold red"}


def render(report: ValidationReport, console: Console) -> None:
    """Print the table, the tolerances each row used and where they came from, the failures."""
    table = Table(title="cr-edge validate", show_lines=True)
    table.add_column("artifact", overflow="fold")
    table.add_column("runtime")
    for column in COLUMNS:
        table.add_column(column)
    for r in report.results:
        cells = [_cell(o) for o in r.outcomes().values()]
        table.add_row(escape(r.loaded or r.artifact), r.runtime, *cells)
    console.print(table)
    for r in report.results:
        if r.tolerances is not None:
            console.print(
                _tolerance_line(r), style="dim", markup=False, highlight=False, soft_wrap=True
            )
    for line in report.failures():
        console.print(f"FAIL {line}", style="red", markup=False, highlight=False, soft_wrap=True)


def _cell(outcome: Outcome) -> str:
    style = STYLES.get(outcome.status, "yellow")
    return f"[{style}]{outcome.status}[/{style}] {escape(outcome.summary)}"


def _tolerance_line(r: RuntimeResult) -> str:
    t = r.tolerances
    src = t.sources
    line = (
        f"tolerance {r.loaded or r.artifact} [{r.runtime}]: outputs atol={t.atol:.3g} "
        f"({src.get('atol', 'policy')}), rtol={t.rtol:.3g} ({src.get('rtol', 'policy')}); "
        f"companion derivatives rel<={t.companion.rtol:.3g}, cos>={t.companion.min_cosine:g} "
        f"({src.get('derivatives', 'policy')})"
    )
    fd = t.finite_differences
    if fd is not None and "finite_differences" in src:  # measured on the float64 copy
        line += (
            f"; finite differences rel<={fd.rtol:.3g}, cos>={fd.min_cosine:g} "
            f"({src['finite_differences']})"
        )
    return line
