"""Progress display shared by the commands: rich on a terminal, quiet elsewhere."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

console = Console(stderr=True)


@contextmanager
def epoch_bar(total: int, label: str) -> Iterator:
    """A bar over epochs; the callback it yields takes an ``EpochStats``-like object."""
    columns = (
        TextColumn(f"[bold]{label}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[stats]}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task(label, total=total, stats="")

        def update(stats) -> None:
            progress.update(
                task,
                completed=stats.epoch,
                stats=(
                    f"loss {stats.loss:.4f}  dreg {stats.dreg:.2e}  val acc {stats.val_accuracy:.3f}"
                ),
            )

        yield update
