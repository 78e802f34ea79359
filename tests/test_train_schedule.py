"""The learning-rate schedule, and when the best epoch fell: values worked out by hand."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch

from cr_edge.errors import InputError
from cr_edge.fairfight.runner import late_best
from cr_edge.nets import NetConfig, build_net
from cr_edge.recipe import Recipe
from cr_edge.train.loop import COSINE_FLOOR, scheduled_lr, steps_per_epoch, train
from cr_edge.train.ranks import Rank

TINY = {"data": "digits", "epochs": 3, "hidden": (8,)}


def test_cosine_falls_from_lr_to_its_floor_over_the_budget():
    # 5 steps: t = 0, 1/4, 1/2, 3/4, 1 -> cos(pi t) = 1, sqrt(1/2), 0, -sqrt(1/2), -1
    f = COSINE_FLOOR
    expected = [1.0, f + (1 - f) * (1 + math.sqrt(0.5)) / 2, f + (1 - f) / 2]
    expected += [f + (1 - f) * (1 - math.sqrt(0.5)) / 2, f]
    got = [scheduled_lr(0.1, "cosine", s, 5) for s in range(5)]
    assert got == pytest.approx([0.1 * e for e in expected])
    assert scheduled_lr(0.1, "cosine", 9, 5) == pytest.approx(0.1 * f)  # past the end: the floor
    assert all(scheduled_lr(0.1, "constant", s, 5) == 0.1 for s in range(5))
    assert scheduled_lr(0.1, "cosine", 0, 1) == 0.1  # a one-step budget has nothing to decay


def test_steps_per_epoch_counts_the_last_partial_batch_and_each_ranks_shard():
    assert steps_per_epoch(130, 64) == 3
    assert steps_per_epoch(128, 64) == 2
    # 2 ranks: 65 samples each (DistributedSampler pads 130 to 130), batches of 32 -> 3 steps
    assert steps_per_epoch(130, 64, Rank(0, 2)) == 3


def test_a_checkpoint_from_before_the_new_defaults_reads_as_it_trained():
    new = ("lr_schedule", "dreg_positions")
    old = {k: v for k, v in Recipe().to_json().items() if k not in new}
    assert (Recipe.from_json(old).lr_schedule, Recipe.from_json(old).dreg_positions) == (
        "constant",
        "sum",
    )
    assert (Recipe().lr_schedule, Recipe().dreg_positions) == ("cosine", "mean")
    net = {k: v for k, v in NetConfig(arch="conv", input_shape=(1, 8)).to_json().items()}
    del net["dreg_positions"]
    assert NetConfig.from_json(net).dreg_positions == "sum"
    with pytest.raises(InputError, match="lr_schedule"):
        Recipe(lr_schedule="linear")


def test_a_conv_layers_dreg_term_per_position_is_its_sum_over_the_positions():
    # two Conv1d stages on length 8: 8 output positions, then 4 after the pool
    config = NetConfig(arch="conv", input_shape=(1, 8), hidden=(3, 3), n_classes=2)
    x = torch.randn(5, 1, 8, generator=torch.Generator().manual_seed(0))
    summed = build_net(config, seed=0).forward_with_jacobians(x)[1]
    mean_net = build_net(dataclasses.replace(config, dreg_positions="mean"), seed=0)
    per_position = mean_net.forward_with_jacobians(x)[1]
    for s, m, positions in zip(summed, per_position, (8, 4), strict=True):
        torch.testing.assert_close(m, s / positions)


def test_late_best_flags_the_last_tenth_of_the_budget():
    # budget 20: epochs 19 and 20 are the last 10%; budget 15: 14 and 15 (> 13.5)
    assert [late_best(e, 20) for e in (18, 19, 20)] == [False, True, True]
    assert [late_best(e, 15) for e in (13, 14)] == [False, True]


def test_the_schedule_changes_training_and_the_metrics_say_when_the_best_epoch_was(
    tmp_path: Path,
):
    cosine = train(Recipe(**TINY), tmp_path / "cos")
    constant = train(Recipe(**TINY, lr_schedule="constant"), tmp_path / "const")
    m = cosine.metrics
    assert 1 <= m["best_epoch"] <= m["epochs_trained"] <= 3
    w_cos, w_const = (next(r.net.parameters()) for r in (cosine, constant))
    assert not torch.equal(w_cos, w_const)  # the schedule is applied, not just recorded


def test_cli_lr_schedule_reaches_the_recipe(cli_run, tmp_path: Path):
    out = tmp_path / "ck"
    args = ["--data", "digits", "--hidden", "8", "--epochs", "1", "--lr-schedule", "constant"]
    result = cli_run("train", *args, "--out", out)
    assert result.exit_code == 0, result.output
    config = json.loads((out / "config.json").read_text())
    assert config["recipe"]["lr_schedule"] == "constant"
    bad = cli_run("train", "--data", "digits", "--lr-schedule", "linear", "--out", tmp_path / "x")
    assert bad.exit_code == 2 and "--lr-schedule" in bad.output
