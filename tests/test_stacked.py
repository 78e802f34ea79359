"""Stacked training (seeds and learning rates of one shape at once) against single runs."""

from __future__ import annotations

import statistics
from pathlib import Path

import pytest

from cr_edge.errors import InputError
from cr_edge.fairfight.stacked import check_stackable, stack_groups, train_stacked
from cr_edge.recipe import Recipe
from cr_edge.train.loop import train

BASE = Recipe(data="digits", hidden=(8,), epochs=2, patience=2, dreg_lambda=1e-2)


def test_only_seeds_and_tuned_settings_may_differ_in_a_stack():
    with pytest.raises(InputError, match="'hidden' differs"):
        check_stackable([BASE, BASE.replace(hidden=(16,))])
    with pytest.raises(InputError, match="classifies only"):
        check_stackable([Recipe(data="diabetes", task="regress")])
    mixed = [BASE, BASE.replace(hidden=(16,)), BASE.replace(seed=1, lr=1e-2)]
    assert stack_groups(mixed) == [[0, 2], [1]]


@pytest.mark.slow
def test_stacked_and_single_runs_agree_within_seed_noise(tmp_path: Path):
    # three seeds and two learning rates, clipping and the range penalty on (train's defaults)
    recipes = [BASE.replace(seed=s, lr=lr) for s in (0, 1, 2) for lr in (3e-3, 1e-2)]
    stacked = train_stacked(recipes)
    single = [train(r, tmp_path / f"r{i}").metrics for i, r in enumerate(recipes)]
    for run in stacked:
        assert run.failed is None
        assert 1 <= run.best_epoch <= run.epochs <= BASE.epochs
    for lr in (3e-3, 1e-2):
        one = [m["test_accuracy"] for r, m in zip(recipes, single, strict=True) if r.lr == lr]
        many = [s.test_accuracy for s in stacked if s.recipe.lr == lr]
        noise = statistics.stdev(one)
        assert noise > 0  # the seeds do differ: the comparison below has a scale
        # each stacked net within the seeds' own spread of its single twin, and so their means
        assert all(abs(a - b) <= noise for a, b in zip(one, many, strict=True)), (one, many)
        assert abs(statistics.mean(one) - statistics.mean(many)) <= noise / 2
