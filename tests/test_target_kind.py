"""Target types are detected, not guessed (issue 12): the two CSV rows of its table, and more.

Before: a continuous CSV target became 600 classes (test accuracy 0, exit 0) and star
ratings 1-5 five unordered classes, both without a word.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cr_edge.data.target_kind import CLASSIFY, ORDINAL_LOOKING, REGRESS, target_kind


def _csv(path: Path, target: np.ndarray, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((len(target), 3))
    rows = [f"{a:.4f},{b:.4f},{c:.4f},{t}" for (a, b, c), t in zip(x, target, strict=True)]
    path.write_text("a,b,c,y\n" + "\n".join(rows) + "\n")
    return path


@pytest.mark.parametrize(
    ("target", "evidence"),
    [
        (np.round(np.random.default_rng(1).uniform(0, 100, 600), 3), "non-integer values"),
        (np.arange(600) * 7 % 601, "600 distinct integer values"),
    ],
    ids=["continuous", "many-integers"],
)
def test_a_regression_target_is_refused_with_exit_2(cli_run, tmp_path, target, evidence):
    data = _csv(tmp_path / "prices.csv", target)
    out = tmp_path / "ck"
    result = cli_run("train", "--data", data, "--label", "y", "--epochs", "1", "--out", out)
    assert result.exit_code == 2, result.output
    # --task regress exists now: the message names the column and sends the user there
    assert "prices.csv, column 'y': looks like a regression target" in result.output
    assert "train it with --task regress" in result.output
    assert evidence in result.output
    assert "Traceback" not in result.output
    assert not out.exists() or not any(out.iterdir())


def test_star_ratings_train_with_a_note_pointing_at_ordinal(cli_run, tmp_path):
    data = _csv(tmp_path / "stars.csv", np.arange(200) % 5 + 1)
    out = tmp_path / "ck"
    args = ["--hidden", "4", "--epochs", "1"]
    result = cli_run("train", "--data", data, "--label", "y", *args, "--out", out)
    assert result.exit_code == 0, result.output
    assert "note:" in result.output and "1..5" in result.output
    assert "--task ordinal" in result.output


def test_a_float_npz_target_is_refused_as_regression(cli_run, tmp_path):
    np.savez(tmp_path / "r.npz", x=np.ones((50, 2)), y=np.linspace(0, 1, 50))
    result = cli_run(
        "train", "--data", tmp_path / "r.npz", "--epochs", "1", "--out", tmp_path / "ck"
    )
    assert result.exit_code == 2, result.output
    assert "array 'y': looks like a regression target" in result.output
    assert "--task regress" in result.output


@pytest.mark.parametrize(
    ("values", "kind"),
    [
        (np.arange(1797) % 10, CLASSIFY),  # digits: 0..9 is not read as ranks
        (np.arange(60_000) % 100, CLASSIFY),  # 100 classes, 600 samples each
        (["cat", "dog", "cat"], CLASSIFY),
        (np.array([True, False]), CLASSIFY),
        (["1.0", "2.0", "1.0"], CLASSIFY),  # whole floats are integers: two classes
        (["1", "2", "3", "2"], ORDINAL_LOOKING),
        (["0.5", "1", "2"], REGRESS),
        (np.arange(30), REGRESS),
    ],
)
def test_target_kind(values, kind):
    assert target_kind(values).kind == kind
