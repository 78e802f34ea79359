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
                    f"loss {stats.loss:.4f}  dreg {stats.dreg:.2e}  "
                    f"val {stats.val_metric} {stats.val_score:.3f}"
                ),
            )

        yield update


@contextmanager
def step_bar(steps: tuple[str, ...], label: str) -> Iterator:
    """A bar over named steps; the callback it yields is called with each step's name."""
    columns = (
        TextColumn(f"[bold]{label}"),
        BarColumn(),
        TextColumn("{task.fields[step]}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task(label, total=len(steps), step="")

        def update(step: str) -> None:
            progress.update(task, completed=steps.index(step), step=step)

        yield update
        progress.update(task, completed=len(steps), step="done")


@contextmanager
def entry_bar(label: str) -> Iterator:
    """A bar over ladder entries; the callback takes (entry name, index, total)."""
    columns = (
        TextColumn(f"[bold]{label}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[entry]}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task(label, total=None, entry="")

        def update(name: str, index: int, total: int) -> None:
            progress.update(task, completed=index, total=total, entry=name)

        yield update
