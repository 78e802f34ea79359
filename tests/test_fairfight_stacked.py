"""The engine trains the runs of one phase and shape (family, architecture, width; a probe's
fraction) as one stack and keeps one record per task under the task's own key; a stacked
ladder run's record is a single run's, measured the same way."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from cr_edge.fairfight.engine import Engine, RecordStore, Workers, execute, work_units
from cr_edge.fairfight.ladder import BUDGETS, ladder_tasks, tuning_tasks
from cr_edge.fairfight.runner import run_group, run_task
from cr_edge.fairfight.stacked import stack_shape

# the quick budget with three tuning seeds and two learning rates: 6 tasks per group
BUDGET = dataclasses.replace(BUDGETS["quick"], tune_seeds=(0, 1, 2), lrs=(5e-3, 1e-2))


def test_tuning_tasks_of_one_shape_form_one_stack():
    tune = tuning_tasks("digits", BUDGET, ("depth1", "conv"))
    units = work_units(tune)
    # quick: one tuning width per arch, so one stack per (family, arch), every setting and
    # seed; families that differ only in a per-net field (cr and cr-nodreg: lambda) share one
    assert len(units) == len({(t.arch, stack_shape(t.recipe)) for t in tune}) >= 2
    for stack, unit in units:
        assert stack and len(unit) % (len(BUDGET.lrs) * len(BUDGET.tune_seeds)) == 0
        assert len({(t.arch, t.width, stack_shape(t.recipe)) for t in unit}) == 1
    assert sorted(t.key for _, u in units for t in u) == sorted(t.key for t in tune)
    # the ladder and probes stack by shape too: per width, and per probe fraction
    ladder = ladder_tasks("digits", BUDGET, ("depth1",), {})
    for stack, unit in work_units(ladder):
        assert stack and len(unit) % len(BUDGET.seeds) == 0
        assert len({(t.phase, t.width, t.fraction, stack_shape(t.recipe)) for t in unit}) == 1
    # stacking off: every task alone
    assert all(not stack and len(u) == 1 for stack, u in work_units(tune, stacked=False))
    # regression is not stacked (train_stacked classifies only)
    regress = tuning_tasks("diabetes", BUDGET, ("depth1",), task="regress")
    assert all(not stack for stack, _ in work_units(regress))


def test_a_stacked_group_gives_one_record_per_task_under_its_key(tmp_path: Path):
    tasks = [t for t in tuning_tasks("digits", BUDGET, ("depth1",)) if t.family == "cr"]
    store = RecordStore(tmp_path)
    with Workers(Engine(workers=1)) as workers:
        records, ran = execute(tasks, store, workers)
    assert ran == len(tasks) == 6
    for task, r in zip(tasks, records, strict=True):
        assert r["key"] == task.key and r["trainer"] == "stacked"
        assert (r["lr"], r["seed"]) == (task.lr, task.seed)
        assert 0.5 < r["val_accuracy"] <= 1.0  # digits w16, 3 epochs: well above chance (0.1)
        assert 1 <= r["best_epoch"] <= r["epochs"] <= BUDGET.epochs
        assert r["late_best"] == (r["best_epoch"] > 0.9 * BUDGET.epochs)
        stored = json.loads(store.path(task).read_text())
        assert stored["record"] == r
    # a resumed fight reuses them: nothing is trained again
    with Workers(Engine(workers=1)) as workers:
        again, ran = execute(tasks, RecordStore(tmp_path), workers)
    assert ran == 0 and again == records


def test_a_stacked_ladder_record_is_the_single_runs_record():
    """Same seed, split, initial weights and batch order: a stacked ladder run's record has
    every field a single run's has, equal up to floating-point summation order (1e-4)."""
    tasks = [t for t in ladder_tasks("digits", BUDGET, ("depth1",), {}) if t.family == "cr"]
    group = [t for t in tasks if t.phase == "ladder" and t.width == tasks[0].width][:2]
    stacked = run_group([t.to_json() for t in group])
    for task, got in zip(group, stacked, strict=True):
        single = run_task(task.to_json())
        assert got.pop("trainer") == "stacked"
        assert set(got) == set(single)
        for key, value in single.items():
            if isinstance(value, float):
                assert got[key] == pytest.approx(value, rel=1e-4, abs=1e-6), key
            elif key == "corruption":
                assert got[key] == pytest.approx(value, abs=1e-9)
            else:
                assert got[key] == value, key
