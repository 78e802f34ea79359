"""`cr-edge fairfight --budget quick` runs, and its ratios follow from its own JSON."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from cr_edge.cli import cli
from cr_edge.fairfight.ladder import FAMILIES, ladder
from cr_edge.fairfight.verdict import ACCURACY_SLACK, aggregate, verdict


def _record(family: str, width: int, seed: int, acc: float, params: int, lat: float) -> dict:
    return {
        "family": family,
        "width": width,
        "seed": seed,
        "parameters": params,
        "test_accuracy": acc,
        "tail_ratio": 1.1,
        "peak_volatility": 2.0,
        "fp32_latency_us": lat,
        "int8_latency_us": lat,
    }


def test_verdict_compares_the_smallest_nets_that_reach_the_threshold():
    runs = [
        _record("relu", 4, 0, 0.80, 100, 5.0),
        _record("relu", 16, 0, 0.958, 400, 6.0),
        _record("relu", 64, 0, 0.96, 1600, 9.0),
        _record("cr", 4, 0, 0.955, 120, 5.5),
        _record("cr", 16, 0, 0.97, 450, 7.0),
    ]
    v = verdict(runs)
    assert v["threshold"] == pytest.approx(0.96 - ACCURACY_SLACK)
    assert v["smallest_baseline_at_threshold"]["width"] == 16
    assert v["smallest_cr_at_threshold"]["width"] == 4
    assert v["parameter_ratio"] == pytest.approx(400 / 120)
    assert v["latency_ratio"] == pytest.approx(6.0 / 5.5)
    assert v["parameter_ratio_vs_widest"] == pytest.approx(1600 / 120)
    assert v["claims"][0]["held"] == "partly"  # fewer parameters, but 3.3x is not 15.5x


def test_every_family_shares_the_ladder():
    specs = ladder("wine", "quick")
    assert {s.family.name for s in specs} == {f.name for f in FAMILIES}
    shared = {
        (s.recipe.epochs, s.recipe.lr, s.recipe.batch_size, s.recipe.optimizer) for s in specs
    }
    assert len(shared) == 1, "only activation, width and DREG may differ"


@pytest.mark.slow
def test_quick_fairfight_report_recomputes_from_its_json(tmp_path: Path):
    out = tmp_path / "ff"
    result = CliRunner().invoke(
        cli, ["fairfight", "--data", "wine", "--budget", "quick", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    assert len(report["runs"]) == len(ladder("wine", "quick"))
    again = verdict(report["runs"])
    for key in ("parameter_ratio", "latency_ratio", "parameter_ratio_vs_widest", "threshold"):
        assert again[key] == report["verdict"][key], key
    rows = aggregate(report["runs"])
    best = max((r for r in rows if r["family"] in ("relu", "gelu")), key=lambda r: r["accuracy"])
    assert report["verdict"]["best_baseline"] == best
    for png in ("accuracy_vs_parameters.png", "accuracy_vs_latency.png", "gradient_norms.png"):
        assert (out / png).stat().st_size > 1000, png
    md = (out / "report.md").read_text()
    assert "| claim | paper | measured | held |" in md
