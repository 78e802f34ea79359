"""``cr-edge fairfight``: tune, climb the ladder, probe, decide, time the equal-accuracy pair."""

from __future__ import annotations

import dataclasses
import os
import resource
import time
from collections.abc import Callable
from pathlib import Path

from cr_edge.artifacts.folder_lock import holds_out
from cr_edge.data import load_source
from cr_edge.errors import InputError
from cr_edge.fairfight.engine import Engine, Progress, RecordStore, Workers, execute
from cr_edge.fairfight.ladder import (
    Task,
    archs_for,
    budget_named,
    choose,
    extension_tasks,
    grid_edges,
    ladder_tasks,
    tuning_tasks,
)
from cr_edge.fairfight.metric import ACCURACY, Metric, metric_for
from cr_edge.fairfight.report import write_report
from cr_edge.fairfight.runner import latency_at_equal_accuracy
from cr_edge.fairfight.verdict import CR_FAMILY, aggregate, verdict


@holds_out("fairfight")
def fairfight(
    data: str,
    budget: str,
    out: Path,
    label: str | None = None,
    engine: Engine | None = None,
    progress: Callable[[str], Progress] | None = None,
    latency: bool = True,
    task: str = "classify",
    reuse_stale: bool = False,
) -> dict:
    """Run (or resume) the whole fight under ``out`` and write its report.

    ``progress(phase)`` returns the callback for that phase's tasks. ``latency=False``
    skips exporting and timing the equal-accuracy pair (the slowest single step). ``task``
    is the recipes' ``--task``; it names the metric every net is compared on. A finished
    record made by other training code (``engine.code_version``) is trained again unless
    ``reuse_stale``.
    """
    out = Path(out)
    b = budget_named(budget)
    metric = metric_for(task)
    engine = engine or Engine()
    store = RecordStore(out / "records", reuse_stale=reuse_stale)
    # a task the data cannot have (regression on a class-only built-in) is refused here
    x = load_source(data, label, task).x
    if x.dtype.kind in "iu":  # detected as text (Yelp's layout): its ladder is not built
        raise InputError(
            f"{data}: text (token ids); the Fair Fight's ladders are MLP and conv nets on "
            "numeric features, so it does not take text data yet"
        )
    archs = archs_for(b, x.shape[1:])
    start, cpu_start = time.perf_counter(), _cpu_seconds()
    with Workers(engine) as workers:
        tuned, ran_t = execute(
            tuning_tasks(data, b, archs, label, task),
            store,
            workers,
            progress and progress("tune"),
        )
        # a grid whose edge won grows one step, round by round, up to the budget's limit
        while more := extension_tasks(data, b, archs, tuned, label, task, metric):
            extra, ran = execute(more, store, workers, progress and progress("tune"))
            tuned, ran_t = tuned + extra, ran_t + ran
        chosen = choose(tuned, metric)
        tasks = ladder_tasks(data, b, archs, chosen, label, task)
        runs, ran_l = execute(tasks, store, workers, progress and progress("ladder"))
        again = retry_tasks(tasks, runs, b.seeds)
        retried, ran_r = execute(
            [t for _, t in again], store, workers, progress and progress("retry")
        )
    runs += [
        {**r, "retry_of": first.key, "retry_of_seed": first.seed}
        for (first, _), r in zip(again, retried, strict=True)
    ]
    tasks += [t for _, t in again]
    records = tuned + runs
    v = verdict(records, b.bootstrap, metric)
    pair = None
    if latency:
        ladder = [r for r in runs if r["phase"] == "ladder" and not r.get("failed")]
        pair = latency_at_equal_accuracy(
            *_pair(
                v,
                tasks,
                aggregate(ladder, metric),
                {r["key"] for r in runs if r.get("failed")},
                metric,
            ),
            out / "pair",
            b.profile_iters,
        )
    execution = {
        "workers": engine.workers,
        "ray": engine.ray,
        "stacked": engine.stacked,  # runs of one shape trained as stacks (runner.run_group)
        "tasks": len(records),
        "ran": ran_t + ran_l + ran_r,
        "reused": len(records) - ran_t - ran_l - ran_r,
        "code_version": store.code,
        "stale_records": len(store.stale),
        "stale_reused": len(store.stale) if reuse_stale else 0,
        "wall_seconds": time.perf_counter() - start,
        # this process and its finished workers: with local workers, cpu / (wall x workers) is
        # the share of their cores the fight got; the rest went to other processes
        "cpu_seconds": _cpu_seconds() - cpu_start,
        "load_average": list(os.getloadavg()),  # 1, 5 and 15 min, at the end
        "tuning_edges": grid_edges(b, tuned, metric),  # where grids grew, where they still bind
    }
    return write_report(data, budget, records, chosen, v, pair, execution, out, task)


def _cpu_seconds() -> float:
    """User and system CPU time of this process and of its children that have exited (a
    local pool's workers, once the pool is shut down)."""
    own, children = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def retry_tasks(
    tasks: list[Task], records: list[dict], seeds: tuple[int, ...]
) -> list[tuple[Task, Task]]:
    """(diverged task, its retry) for every ladder or probe run whose training failed.

    Each is retried once, with the next seed the budget does not use: the n-th failed seed
    of a point (in seed order) gets ``max(seeds) + n``, so a resumed fight asks for the
    same retries and finds their records. A retry that fails too stays failed.
    """
    failed: dict[tuple, list[Task]] = {}
    for t, r in zip(tasks, records, strict=True):
        if r.get("failed") and t.phase != "tune":
            failed.setdefault((t.phase, t.family, t.arch, t.width, t.fraction), []).append(t)
    out = []
    for point in failed.values():
        for n, first in enumerate(sorted(point, key=lambda t: t.seed), start=1):
            seed = max(seeds) + n
            recipe = dataclasses.replace(first.recipe, seed=seed)
            out.append((first, dataclasses.replace(first, seed=seed, recipe=recipe)))
    return out


def _pair(
    v: dict, tasks: list[Task], rows: list[dict], failed: set[str], metric: Metric = ACCURACY
) -> tuple[Task, Task]:
    """The ladder tasks behind the smallest baseline and CR points reaching T, each at its
    first seed whose run finished (retraining a diverged seed diverges again)."""
    cr = v["smallest_cr_at_threshold"] or _closest_cr(rows, metric)
    wanted = [tuple(v["smallest_baseline_at_threshold"]), tuple(cr)]
    found = []
    for family, arch, width in wanted:
        found.append(
            min(
                (
                    t
                    for t in tasks
                    if t.phase == "ladder"
                    and t.key not in failed
                    and (t.family, t.arch, t.width) == (family, arch, width)
                ),
                key=lambda t: t.seed,
            )
        )
    return found[0], found[1]


def _closest_cr(rows: list[dict], metric: Metric = ACCURACY) -> tuple[str, str, int]:
    """When no CR point reaches T, time the one that came closest: the best mean validation
    metric (the widest net is not it when a small conv beats every MLP)."""
    r = max(
        (r for r in rows if r["family"] == CR_FAMILY and not r.get("insufficient")),
        key=lambda r: metric.score(r[f"val_{metric.key}"]),
    )
    return (r["family"], r["arch"], r["width"])
