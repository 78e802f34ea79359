"""Progress display shared by the commands: rich on a terminal, quiet elsewhere."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

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
def runs_bar(label: str) -> Iterator:
    """Bars over a sweep's runs, one per phase: done/total, runs left, elapsed and ETA.

    Yields ``phase -> callback(done, total, name)``. Runs reused from an earlier,
    interrupted sweep start the bar part-filled and do not count towards the ETA.
    """
    columns = (
        TextColumn(f"[bold]{label}" + " {task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[left]} left"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, transient=False) as progress:

        def phase(name: str):
            task = None

            def update(done: int, total: int, _run: str | None) -> None:
                nonlocal task
                if task is None:
                    task = progress.add_task(name, total=total, completed=done, left=total - done)
                else:
                    progress.update(task, completed=done, left=total - done)

            return update

        yield phase
