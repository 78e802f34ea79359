"""Progress display shared by the commands: bars on a terminal, plain lines elsewhere.

A bar is redrawn in place with carriage returns and cursor moves: on a terminal that
reads well, but in a pipe, a CI log or a file every redraw would stay as garbage. So
each display asks ``bars_wanted()`` when it starts and, without a terminal, writes one
plain line per stage, epoch or run instead (to stderr, as the bars do, so stdout keeps
only the command's result). ``TTY_INTERACTIVE=0``/``1`` overrides the guess, as rich
itself honours it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import click
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

console = Console(stderr=True)


def bars_wanted(where: Console | None = None) -> bool:
    """True when ``where`` (default: the commands' stderr console) is an interactive terminal.

    Decided each time a display starts, not at import: the same process may write to a
    terminal once and to a captured stream (a test's runner) the next time.
    """
    forced = os.environ.get("TTY_INTERACTIVE")
    if forced in ("0", "1"):
        return forced == "1"
    where = where or console
    return where.is_terminal and not where.is_dumb_terminal


def _line(text: str) -> None:
    """One plain line on stderr: no markup, no colour, no wrapping at the console's width."""
    click.echo(text, err=True)


def _epoch_text(stats) -> str:
    return (
        f"loss {stats.loss:.4f}  dreg {stats.dreg:.2e}  "
        f"val {stats.val_metric} {stats.val_score:.3f}"
    )


@contextmanager
def epoch_bar(total: int, label: str) -> Iterator[Callable]:
    """A bar over epochs; the callback it yields takes an ``EpochStats``-like object."""
    if not bars_wanted():

        def line(stats) -> None:
            _line(f"{label}: epoch {stats.epoch}/{total}  {_epoch_text(stats)}")

        yield line
        return
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
            progress.update(task, completed=stats.epoch, stats=_epoch_text(stats))

        yield update


@contextmanager
def step_bar(steps: tuple[str, ...], label: str) -> Iterator[Callable[[str], None]]:
    """A bar over named steps; the callback it yields is called with each step's name.

    Without a terminal: a line as each step starts (``pipeline digits-cr: export (2/5)``),
    so a log shows where a long run is and which step it died in.
    """
    if not bars_wanted():

        def line(step: str) -> None:
            _line(f"{label}: {step} ({steps.index(step) + 1}/{len(steps)})")

        yield line
        return
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
def runs_bar(label: str) -> Iterator[Callable[[str], Callable[[int, int, str | None], None]]]:
    """Bars over a sweep's runs, one per phase: done/total, runs left, elapsed and ETA.

    Yields ``phase -> callback(done, total, name)``. Runs reused from an earlier,
    interrupted sweep start the bar part-filled and do not count towards the ETA.
    Without a terminal: one line per phase as it starts (with the runs reused) and one
    per finished run.
    """
    if not bars_wanted():

        def plain_phase(name: str) -> Callable[[int, int, str | None], None]:
            def line(done: int, total: int, run: str | None) -> None:
                if run is None:
                    _line(f"{label} {name}: {total} runs, {done} reused")
                else:
                    _line(f"{label} {name}: {done}/{total} {run}")

            return line

        yield plain_phase
        return
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


@contextmanager
def fraction_bar() -> Iterator[Callable[[str, float], None]]:
    """A transient bar per measured setting (profile); yields the ``(label, fraction)`` callback.

    Without a terminal: one line per setting, as its measurement starts.
    """
    seen: set[str] = set()
    if not bars_wanted():

        def line(label: str, _fraction: float) -> None:
            if label not in seen:
                seen.add(label)
                _line(f"profile: {label}")

        yield line
        return
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console, transient=True) as progress:
        tasks: dict[str, int] = {}

        def update(label: str, fraction: float) -> None:
            if label not in tasks:
                tasks[label] = progress.add_task(label, total=1.0)
            progress.update(tasks[label], completed=fraction)

        yield update
