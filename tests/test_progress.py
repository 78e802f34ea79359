"""Progress output fits where it goes: bars on a terminal, one plain line per step elsewhere.

click's ``CliRunner`` captures stderr in a buffer that is not a terminal, as a pipe, a CI
log or a file is: there the commands must not draw bars (carriage returns, cursor moves,
bar glyphs), and must say each epoch/stage on a line of its own. The terminal side is
checked too, through a console forced to be one, so a test cannot pass by never drawing.
"""

from __future__ import annotations

import io
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
from rich.console import Console

from cr_edge.cli import progress
from cr_edge.pipeline import STEPS

# What a redrawn bar leaves in a stream: ANSI escapes, carriage returns, rich's bar glyphs.
BAR_MARKS = re.compile("[\x1b\r\u2501\u2578\u257a]")


@pytest.fixture
def no_tty_override(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TTY_INTERACTIVE", raising=False)
    monkeypatch.delenv("FORCE_COLOR", raising=False)
    monkeypatch.delenv("TTY_COMPATIBLE", raising=False)


def test_train_without_a_terminal_writes_one_line_per_epoch(
    cli_run, tmp_path: Path, no_tty_override
) -> None:
    epochs = 2
    result = cli_run("train", "--recipe", "digits-cr", "--epochs", epochs, "--out", tmp_path / "ck")
    assert result.exit_code == 0, result.output
    assert not BAR_MARKS.search(result.stderr), repr(result.stderr[:300])
    lines = [ln for ln in result.stderr.splitlines() if ln.startswith("train digits-cr: epoch")]
    # early stopping may end training before the last epoch, never add one
    assert 1 <= len(lines) <= epochs, result.stderr
    numbers = [int(re.search(r"epoch (\d+)/2", ln).group(1)) for ln in lines]
    assert numbers == list(range(1, len(lines) + 1))


@pytest.mark.slow
def test_pipeline_without_a_terminal_writes_one_line_per_stage(
    cli_run, tmp_path: Path, no_tty_override
) -> None:
    args = ["pipeline", "--epochs", 1, "--runtime", "cpu", "--certify-on", "none"]
    result = cli_run(*args, "--out", tmp_path / "run")
    assert result.exit_code == 0, result.output
    assert not BAR_MARKS.search(result.stderr), repr(result.stderr[:300])
    stages = [ln for ln in result.stderr.splitlines() if ln.startswith("pipeline digits-cr: ")]
    assert stages == [  # each stage the pipeline runs, once, in order
        f"pipeline digits-cr: {step} ({k}/{len(STEPS)})" for k, step in enumerate(STEPS, 1)
    ]


def test_steps_without_a_terminal_are_one_line_each(capsys, no_tty_override) -> None:
    steps = ("train", "export", "quantize")
    with progress.step_bar(steps, "pipeline x") as on_step:
        for step in steps:
            on_step(step)
    err = capsys.readouterr().err
    assert not BAR_MARKS.search(err)
    assert err.splitlines() == [
        "pipeline x: train (1/3)",
        "pipeline x: export (2/3)",
        "pipeline x: quantize (3/3)",
    ]


def test_runs_and_settings_without_a_terminal(capsys, no_tty_override) -> None:
    with progress.runs_bar("fairfight") as phase:
        tune = phase("tune")
        tune(1, 3, None)  # one run reused from an earlier sweep
        tune(2, 3, "a")
        tune(3, 3, "b")
    with progress.fraction_bar() as on_progress:
        for f in (0.1, 0.5, 1.0):
            on_progress("cpu batch 1", f)
        on_progress("cpu batch 64", 0.3)
    err = capsys.readouterr().err
    assert not BAR_MARKS.search(err)
    assert err.splitlines() == [
        "fairfight tune: 3 runs, 1 reused",
        "fairfight tune: 2/3 a",
        "fairfight tune: 3/3 b",
        "profile: cpu batch 1",
        "profile: cpu batch 64",
    ]


def test_a_terminal_gets_bars(monkeypatch: pytest.MonkeyPatch, no_tty_override) -> None:
    screen = io.StringIO()
    terminal = Console(file=screen, force_terminal=True, width=100)
    monkeypatch.setattr(progress, "console", terminal)
    assert progress.bars_wanted()
    with progress.epoch_bar(2, "train t") as on_epoch:
        for epoch in (1, 2):
            on_epoch(
                SimpleNamespace(epoch=epoch, loss=0.5, dreg=1e-3, val_metric="acc", val_score=0.9)
            )
    assert BAR_MARKS.search(screen.getvalue())
    assert "2/2" in screen.getvalue()


def test_tty_interactive_overrides_the_guess(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(progress, "console", Console(file=io.StringIO(), force_terminal=True))
    monkeypatch.setenv("TTY_INTERACTIVE", "0")
    assert not progress.bars_wanted()
    monkeypatch.setattr(progress, "console", Console(file=io.StringIO(), force_terminal=False))
    monkeypatch.setenv("TTY_INTERACTIVE", "1")
    assert progress.bars_wanted()
