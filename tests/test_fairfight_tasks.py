"""The Fair Fight on regression (MAE, lower is better) and ordinal data (ordinal accuracy)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from cr_edge.cli import cli
from cr_edge.fairfight.fight import fairfight
from cr_edge.fairfight.metric import METRICS
from cr_edge.fairfight.verdict import equal_accuracy


def _mae_run(family: str, width: int, seed: int, mae: float, params: int) -> dict:
    return {
        "phase": "ladder",
        "family": family,
        "arch": "depth1",
        "width": width,
        "seed": seed,
        "parameters": params,
        "test_mae": mae,
        "val_mae": mae,
    }


def test_equal_mae_reads_lower_as_better():
    runs = []
    for s, d in enumerate((-0.1, 0.0, 0.1)):
        runs += [
            _mae_run("relu", 4, s, 60.0 + d, 100),
            _mae_run("relu", 16, s, 50.2 + d, 400),
            _mae_run("relu", 64, s, 50.0 + d, 1600),  # the best baseline: the lowest MAE
            _mae_run("cr", 4, s, 50.4 + d, 120),  # within 1% of 50.0
            _mae_run("cr", 16, s, 49.0 + d, 450),
        ]
    eq = equal_accuracy(runs, METRICS["regress"])
    assert eq["best_baseline"] == ("relu", "depth1", 64)
    assert eq["threshold"] == pytest.approx(50.5)
    assert eq["baseline"] == ("relu", "depth1", 16)
    assert eq["cr"] == ("cr", "depth1", 4)
    assert eq["ratio"] == pytest.approx(400 / 120)


@pytest.mark.parametrize(
    ("data", "task", "name", "key"),
    [("diabetes", "regress", "MAE", "mae"), ("anes96", "ordinal", "ordinal accuracy", "accuracy")],
)
def test_the_quick_fight_compares_the_tasks_metric(tmp_path: Path, data, task, name, key):
    out = tmp_path / data
    report = fairfight(data, "quick", out, latency=False, task=task)
    assert report["task"] == task
    runs = [r for r in report["runs"] if not r.get("failed")]
    assert runs and all(f"test_{key}" in r for r in runs)
    probes = [r for r in runs if r["phase"] != "tune"]
    assert all(set(r["corruption"]) == {"noise_0.1", "noise_0.25", "noise_0.5"} for r in probes)
    if task == "regress":  # MAE in the target's units (diabetes: progress scores ~25-346)
        assert all(10 < r["test_mae"] < 200 for r in runs)
        assert all("test_accuracy" not in r for r in runs)
    else:
        assert all(0 <= r["test_accuracy"] <= 1 for r in runs)
    md = (out / "report.md").read_text()
    # validation chooses (the ladder matrix is what every choice reads), test only reports
    assert f"Validation {name}, mean ± 95% CI" in md
    assert f"Test {name}, mean" not in md
    assert f"test {name} (mean [95% CI]) is reported for the chosen points only" in md
    assert f"drop of test {name} from clean" in md
    assert f"parameters at equal {name}" in md
    assert (out / f"{key}_vs_parameters.png").stat().st_size > 1000
    assert json.loads((out / "report.json").read_text())["task"] == task


def test_regression_on_class_labels_is_refused(tmp_path: Path):
    result = CliRunner().invoke(
        cli, ["fairfight", "--data", "digits", "--task", "regress", "--out", str(tmp_path / "f")]
    )
    assert result.exit_code == 2
    assert "not regress" in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "f" / "report.json").exists()
