"""Human-readable reports: rich tables on the terminal."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

_stdout = Console()


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def print_metrics(title: str, metrics: dict) -> None:
    table = Table(title=title, show_header=True)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in metrics.items():
        table.add_row(key, _fmt(value))
    _stdout.print(table)
