"""The Fair Fight's tuning: equal grids, mean validation choices, and edges that grow."""

from __future__ import annotations

import itertools
import math

import pytest

from cr_edge.fairfight.ladder import (
    BUDGETS,
    FAMILY_BY_NAME,
    Setting,
    Task,
    choose,
    extension_tasks,
    grid_edges,
    ladder_tasks,
    tuning_tasks,
)
from cr_edge.fairfight.report import convergence, convergence_lines, tuning_edge_lines

STANDARD = BUDGETS["standard"]


def _record(t: Task, val: float, failed: bool = False) -> dict:
    r = {
        "key": t.key,
        "family": t.family,
        "arch": t.arch,
        "width": t.width,
        "seed": t.seed,
        "lr": t.lr,
        "dreg": t.dreg,
        "weight_decay": t.recipe.weight_decay,
        "val_accuracy": val,
        "test_accuracy": 1.0 - val,  # the test split disagrees: it must never choose
    }
    return {**r, "failed": "diverged"} if failed else r


@pytest.mark.parametrize("name", ["standard", "full"])
def test_every_family_gets_the_same_trials_on_one_log2_grid(name: str):
    b = BUDGETS[name]
    tasks = tuning_tasks("mnist1d", b, ("depth1", "conv"))
    per_family = {f: sum(t.family == f for t in tasks) for f in b.families}
    assert len(set(per_family.values())) == 1, per_family
    lrs = {f: sorted({t.lr for t in tasks if t.family == f}) for f in b.families}
    assert len({tuple(v) for v in lrs.values()}) == 1
    grid = lrs["cr"]
    assert all(hi / lo == pytest.approx(2.0) for lo, hi in itertools.pairwise(grid))
    # lambda: 0 (no penalty), then at least 1e-4 .. 1e-1; baselines tune weight decay instead
    assert b.lambdas[0] == 0 and min(b.lambdas[1:]) <= 1e-4 and max(b.lambdas) >= 1e-1
    assert {t.dreg for t in tasks if not FAMILY_BY_NAME[t.family].dreg} == {0.0}
    # scored on at least 3 seeds at two widths per architecture
    assert len(b.tune_seeds) >= 3
    for arch in ("depth1", "conv"):
        assert len({t.width for t in tasks if t.arch == arch}) == 2
    assert len({t.key for t in tasks}) == len(tasks)


def test_the_fight_trains_with_a_cosine_schedule_and_per_position_dreg():
    t = next(t for t in tuning_tasks("mnist1d", STANDARD, ("conv",)) if t.dreg > 0)
    assert t.recipe.lr_schedule == "cosine" and t.recipe.dreg_positions == "mean"
    assert t.recipe.patience < t.recipe.epochs


def _cr_depth1(b=STANDARD) -> list[Task]:
    return [t for t in tuning_tasks("digits", b, ("depth1",)) if t.family == "cr"]


def test_choice_is_the_best_mean_over_seeds_and_widths_never_a_failed_or_test_pick():
    tasks = _cr_depth1()
    mid, top = STANDARD.lrs[1], STANDARD.lrs[-1]
    lam = STANDARD.lambdas[2]

    def val(t: Task) -> float:
        if (t.lr, t.dreg) == (top, lam):  # best on seed 0 alone, worse on average
            return 0.99 if t.seed == 0 else 0.60
        if (t.lr, t.dreg) == (top, STANDARD.lambdas[1]):  # best mean, but one run failed
            return 0.95
        return 0.80 if (t.lr, t.dreg) == (mid, lam) else 0.5

    records = [
        _record(t, val(t), failed=(t.lr, t.dreg, t.seed) == (top, STANDARD.lambdas[1], 2))
        for t in tasks
    ]
    assert choose(records) == {("cr", "depth1"): Setting(mid, lam)}
    # the test split is mirrored (1 - val): it would choose otherwise, and does not
    assert extension_tasks("digits", STANDARD, ("depth1",), records) == []


def test_an_edge_winning_grid_is_extended_up_to_its_limit_and_the_report_says_where():
    top, lam = STANDARD.lrs[-1], STANDARD.lambdas[2]

    def val(t: Task) -> float:  # better the higher the learning rate, whatever the rest
        return 0.5 + math.log2(t.lr / top) / 100 + (0.01 if t.dreg == lam else 0.0)

    records = [_record(t, val(t)) for t in _cr_depth1()]
    rounds = []
    while more := extension_tasks("digits", STANDARD, ("depth1",), records):
        rounds.append(sorted({(t.lr, t.dreg) for t in more}))
        # every tuning width and seed, once each
        assert len(more) == len(STANDARD.tune_widths) * len(STANDARD.tune_seeds)
        records += [_record(t, val(t)) for t in more]
        assert len(rounds) <= STANDARD.extend_limit
    # one step (x2) per round at the winner's lambda, until extend_limit steps were taken
    assert rounds == [[(top * 2, lam)], [(top * 4, lam)]]
    assert choose(records)[("cr", "depth1")] == Setting(top * 4, lam)
    [edges] = grid_edges(STANDARD, records)
    assert edges["added_lrs"] == pytest.approx([top * 2, top * 4])
    assert edges["bound"] == ["lr high"] and edges["added_second"] == []
    text = "\n".join(tuning_edge_lines([edges]))
    assert f"| cr | depth1 | {top * 2:.3g}, {top * 4:.3g} | — | lr high |" in text
    assert "Still binding at the limit: cr depth1 (lr high)" in text


def test_the_report_counts_and_flags_runs_that_peaked_late():
    def run(phase: str, late: bool, failed: bool = False) -> dict:
        r = {"key": f"{phase}-{late}", "phase": phase, "late_best": late}
        return {**r, "failed": "diverged"} if failed else r

    # 1 late of 20 finished runs = 5%: not over the flag; the failed run is not counted
    runs = [run("ladder", i == 0) for i in range(20)] + [run("ladder", True, failed=True)]
    c = convergence(runs)
    assert (c["runs"], c["late_best"], c["flagged"]) == (20, 1, False)
    assert "no flag" in "".join(convergence_lines(c))
    # 2 of 20 (10%) is flagged, and counted per phase
    runs[1] = run("tune", True)
    c = convergence(runs)
    assert (c["late_best"], c["flagged"]) == (2, True)
    assert c["by_phase"] == {
        "ladder": {"runs": 19, "late_best": 1},
        "tune": {"runs": 1, "late_best": 1},
    }
    assert "FLAG" in "".join(convergence_lines(c))
    # records from before late_best existed are not counted at all
    assert convergence([{"key": "old", "phase": "ladder"}])["runs"] == 0


def test_the_low_edge_and_the_regulariser_grow_too():
    low = STANDARD.lrs[0]
    big = STANDARD.lambdas[-1]

    def val(t: Task) -> float:  # best at the lowest learning rate and the largest lambda
        return 0.5 - math.log2(t.lr / low) / 100 + t.dreg / 10

    records = [_record(t, val(t)) for t in _cr_depth1()]
    more = extension_tasks("digits", STANDARD, ("depth1",), records)
    step = STANDARD.lambdas[-1] / STANDARD.lambdas[-2]
    assert sorted({(t.lr, t.dreg) for t in more}) == pytest.approx(
        sorted([(low / 2, big), (low, big * step)])
    )
    # a baseline grows its weight decay, its lambda staying 0
    gelu = [t for t in tuning_tasks("digits", STANDARD, ("depth1",)) if t.family == "gelu"]
    wd_top = STANDARD.weight_decays[-1]
    mid = STANDARD.lrs[1]
    records = [
        _record(t, 0.9 if (t.lr, t.recipe.weight_decay) == (mid, wd_top) else 0.5) for t in gelu
    ]
    more = extension_tasks("digits", STANDARD, ("depth1",), records)
    [(lr, lam, wd)] = {(t.lr, t.dreg, t.recipe.weight_decay) for t in more}
    assert (lr, lam) == (mid, 0.0)
    assert wd == pytest.approx(wd_top * STANDARD.weight_decays[-1] / STANDARD.weight_decays[-2])


def test_the_ladder_trains_each_family_with_its_chosen_setting():
    chosen = {("gelu", "depth1"): Setting(8e-3, 0.0, 1e-3)}
    tasks = ladder_tasks("digits", STANDARD, ("depth1",), chosen)
    gelu = [t for t in tasks if t.family == "gelu"]
    assert {(t.lr, t.recipe.weight_decay) for t in gelu} == {(8e-3, 1e-3)}
    # unchosen (every trial failed): the first grid point
    cr = {(t.lr, t.dreg) for t in tasks if t.family == "cr"}
    assert cr == {(STANDARD.lrs[0], STANDARD.lambdas[0])}
