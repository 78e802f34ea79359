"""The Fair Fight: statistics against hand-computed values, the verdict's choices, and the
engine (process pool, Ray cluster, resume) on the quick budget."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import cr_edge
from cr_edge.cli import cli
from cr_edge.fairfight.engine import (
    TRAINING_PATH,
    Engine,
    RecordStore,
    Workers,
    code_version,
    execute,
)
from cr_edge.fairfight.fight import _closest_cr, _pair, fairfight
from cr_edge.fairfight.ladder import (
    BUDGETS,
    FAMILY_BY_NAME,
    choose,
    ladder_tasks,
    tuning_tasks,
)
from cr_edge.fairfight.runner import shifts
from cr_edge.fairfight.stats import bootstrap, holm, mean_ci, welch
from cr_edge.fairfight.verdict import (
    decide,
    equal_accuracy,
    fewer_parameters_tests,
    latency_target,
)

# ---- statistics, against values worked out by hand -----------------------------------


def _t_sf(t: float, df: float) -> float:
    """P(T > t) for Student's t with ``df`` degrees of freedom: its density, written out,
    integrated by the trapezoid rule on a fine grid (an oracle independent of scipy)."""
    c = math.gamma((df + 1) / 2) / (math.sqrt(df * math.pi) * math.gamma(df / 2))
    grid = np.linspace(0.0, abs(t), 200_001)
    density = c * (1 + grid**2 / df) ** (-(df + 1) / 2)
    area = float(np.sum((density[1:] + density[:-1]) / 2 * np.diff(grid)))
    return 0.5 - area if t >= 0 else 0.5 + area


def _t_quantile(q: float, df: float) -> float:
    """The t with ``P(T <= t) = q`` (q > 1/2), by bisection on ``_t_sf``."""
    lo, hi = 0.0, 50.0
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if 1 - _t_sf(mid, df) < q else (lo, mid)
    return (lo + hi) / 2


def test_mean_ci_is_the_student_t_interval():
    # mean 3, sd sqrt(2.5), se sqrt(2.5/5) = 0.70711, t(0.975, 4) = 2.776445
    ci = mean_ci([1, 2, 3, 4, 5])
    assert ci.estimate == 3.0
    assert ci.low == pytest.approx(3 - 2.776445 * 0.707107, abs=1e-5)
    assert ci.high == pytest.approx(3 + 2.776445 * 0.707107, abs=1e-5)
    assert mean_ci([0.5]).low == mean_ci([0.5]).high == 0.5


def test_welch_t_and_degrees_of_freedom():
    # a: mean 2.5, var 5/3; b: mean 5, var 20/3; se^2 = 5/12 + 20/12 = 25/12
    # t = -2.5 / sqrt(25/12) = -sqrt(3); df = (25/12)^2 / ((5/12)^2/3 + (20/12)^2/3) = 75/17
    w = welch([1, 2, 3, 4], [2, 4, 6, 8])
    assert w.difference == pytest.approx(-2.5)
    assert w.t == pytest.approx(-math.sqrt(3))
    assert w.df == pytest.approx(75 / 17)
    # one-sided, P(T > -sqrt(3)) with df 75/17: the density integrated numerically
    assert w.p == pytest.approx(_t_sf(-math.sqrt(3), 75 / 17), abs=1e-7)
    assert w.p == pytest.approx(0.92421, abs=1e-5)
    half = w.interval().high - w.difference  # t(0.975, 75/17) x se, t by bisection
    assert half == pytest.approx(_t_quantile(0.975, 75 / 17) * math.sqrt(25 / 12), rel=1e-6)
    # a margin shifts the tested difference: H1 mean(a) > mean(b) - 3
    assert welch([1, 2, 3, 4], [2, 4, 6, 8], margin=3.0).t == pytest.approx(
        0.5 / math.sqrt(25 / 12)
    )
    exact = welch([1, 1], [1, 1], margin=0.1)
    assert exact.p == 0.0 and welch([1, 1], [2, 2]).p == 1.0


def test_holm_step_down():
    # sorted 0.01, 0.03, 0.04 -> 3*0.01, max(0.03, 2*0.03), max(0.06, 1*0.04)
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])


def test_bootstrap_over_two_groups():
    # resamples of [0, 1] (means): 0 w.p. 1/4, 0.5 w.p. 1/2, 1 w.p. 1/4 -> 95% interval [0, 1]
    ci = bootstrap([0.0, 1.0], lambda gs: float(np.mean(gs)), n_boot=2000)
    assert ci.estimate == 0.5 and (ci.low, ci.high) == (0.0, 1.0)
    # an undefined statistic counts as below everything
    undefined = bootstrap([0.0, 1.0], lambda gs: None if 0.0 in gs else 1.0, n_boot=2000)
    assert undefined is None
    lower = bootstrap([1.0, 2.0], lambda gs: None if gs.count(1.0) == 2 else 1.0, n_boot=2000)
    assert lower.low == -math.inf and lower.high == 1.0


def test_decide_reads_the_interval_not_the_point():
    assert decide(16.0, 30.0, 1.0, 15.5) == "yes"
    assert decide(1.2, 30.0, 1.0, 15.5) == "partly"
    assert decide(0.8, 30.0, 1.0, 15.5) == "undecided"  # a point estimate of 15 would say yes
    assert decide(0.2, 0.9, 1.0, 15.5) == "no"


# ---- the verdict's choices, on hand-built records -------------------------------------


def _rec(family, width, seed, acc, params, val=None, arch="depth1"):
    return {
        "phase": "ladder",
        "family": family,
        "arch": arch,
        "width": width,
        "seed": seed,
        "parameters": params,
        "test_accuracy": acc,
        "val_accuracy": acc if val is None else val,
    }


def test_latency_target_reads_the_batch_64_spread_where_the_ratio_reaches_5x():
    def row(runtime, batch, p10, p90):
        return {
            "runtime": runtime,
            "batch": batch,
            "ratio": (p10 + p90) / 2,
            "p10": p10,
            "p90": p90,
        }

    rows = [
        row("cpu", 1, 0.01, 0.02),  # batch 1 is reported, not judged
        row("cpu", 64, 0.20, 0.30),
        row("pte", 64, 0.30, 0.40),
        row("ort", 64, 0.34, 0.50),
    ]
    held = [v["held"] for v in latency_target(6.0, rows)]
    assert held == ["yes", "undecided", "no"]
    assert {v["held"] for v in latency_target(4.9, rows)} == {"not tested"}
    assert {v["held"] for v in latency_target(None, rows)} == {"not tested"}


def test_without_a_cr_point_at_the_threshold_the_pair_times_the_closest_one():
    rows = [
        {"family": "cr", "arch": "depth1", "width": 512, "val_accuracy": 0.59},
        {"family": "cr", "arch": "conv", "width": 16, "val_accuracy": 0.87},
        {"family": "gelu", "arch": "conv", "width": 16, "val_accuracy": 0.93},
    ]
    assert _closest_cr(rows) == ("cr", "conv", 16)  # not the widest CR net


def test_the_pair_skips_a_seed_whose_ladder_run_diverged():
    tasks = ladder_tasks("digits", BUDGETS["quick"], ("depth1",), {})
    v = {"smallest_cr_at_threshold": None, "smallest_baseline_at_threshold": ["relu", "depth1", 4]}
    rows = [{"family": "cr", "arch": "depth1", "width": w, "val_accuracy": w} for w in (4, 16)]
    diverged = next(t for t in tasks if t.key.startswith("ladder-cr-depth1-w16-s0-"))
    base, cr = _pair(v, tasks, rows, {diverged.key})
    assert (base.family, base.width, base.seed) == ("relu", 4, 0)
    assert (cr.family, cr.width, cr.seed) == ("cr", 16, 1)


def test_a_record_from_before_a_recipe_field_existed_is_reused(tmp_path: Path):
    task = tuning_tasks("digits", BUDGETS["quick"], ("depth1",))[0]
    store = RecordStore(tmp_path)
    store.put(task, {"val_accuracy": 0.5})
    stored = json.loads(store.path(task).read_text())
    del stored["task"]["recipe"]["embed_dim"]  # as an older version wrote it
    store.path(task).write_text(json.dumps(stored))
    assert store.get(task) == {"val_accuracy": 0.5}
    stored["task"]["recipe"]["lr"] *= 2  # other settings: trained again
    store.path(task).write_text(json.dumps(stored))
    assert store.get(task) is None
    changed = dataclasses.replace(task, recipe=dataclasses.replace(task.recipe, embed_dim=8))
    assert changed.key != task.key  # a field away from its default is part of the key


def test_a_stale_record_is_retrained_unless_reuse_stale(tmp_path: Path):
    task = tuning_tasks("digits", BUDGETS["quick"], ("depth1",))[0]
    RecordStore(tmp_path, code="0" * 16).put(task, {"val_accuracy": -1.0})  # other code
    reusing = RecordStore(tmp_path, reuse_stale=True)
    assert reusing.get(task) == {"val_accuracy": -1.0} and reusing.stale == {task.key}
    store = RecordStore(tmp_path)
    with Workers(Engine(workers=1)) as workers:
        records, ran = execute([task], store, workers)
    assert ran == 1 and store.stale == {task.key}
    assert 0.0 <= records[0]["val_accuracy"] <= 1.0  # trained again, not the stale -1
    stored = json.loads(store.path(task).read_text())
    assert stored["code"] == code_version() and stored["record"] == records[0]
    again = RecordStore(tmp_path)
    assert again.get(task) == records[0] and not again.stale  # this code's record: reused


def test_the_code_version_covers_the_training_path():
    root = Path(cr_edge.__file__).parent
    for name in TRAINING_PATH:
        assert (root / name).exists(), name
    assert len(code_version()) == 16 and int(code_version(), 16) >= 0


def test_equal_accuracy_compares_the_smallest_points_reaching_the_threshold():
    runs = []
    for s, d in enumerate((-0.002, 0.0, 0.002)):
        runs += [
            _rec("relu", 4, s, 0.80 + d, 100),
            _rec("relu", 16, s, 0.958 + d, 400),
            _rec("relu", 64, s, 0.96 + d, 1600),
            _rec("cr", 4, s, 0.955 + d, 120),
            _rec("cr", 16, s, 0.97 + d, 450),
        ]
    eq = equal_accuracy(runs)
    assert eq["threshold"] == pytest.approx(0.955)
    assert eq["baseline"] == ("relu", "depth1", 16)
    assert eq["cr"] == ("cr", "depth1", 4)
    assert eq["ratio"] == pytest.approx(400 / 120)


def test_fewer_parameters_tests_choose_on_validation_and_correct_with_holm():
    runs = []
    for s, d in enumerate((-0.01, 0.0, 0.01)):
        runs += [
            _rec("relu", 64, s, 0.90 + d, 1000),
            # the test split favours cr w8, validation favours cr w4: w4 is tested
            _rec("cr", 4, s, 0.91 + d, 100, val=0.99),
            _rec("cr", 8, s, 0.99 + d, 190, val=0.50),
        ]
    tests = fewer_parameters_tests(runs)
    assert {t["scope"] for t in tests} == {"mlp", "all"}  # depth1 only: no conv scope
    tests = [t for t in tests if t["scope"] == "mlp"]
    by_k = {t["k"]: t for t in tests}
    # k x params <= 1.05 x 1000: w4 (100) and w8 (190) for k = 1, 2, 5; none for 15.5
    assert [by_k[k]["cr"] for k in (1.0, 2.0, 5.0)] == [["cr", "depth1", 4]] * 3
    assert by_k[15.5]["cr"] is None and by_k[15.5]["p"] == 1.0  # no CR net is 15.5x smaller
    # cr w4 vs relu: difference 0.01, margin 0.005, sds 0.01 -> t = 0.015/sqrt(2e-4/3),
    # t^2 = 27/8, df = 4. Student's t with 4 df has the closed form
    # F(t) = 1/2 + (3/8) u (1 - u^2 / 12), u = t / sqrt(1 + t^2/4), so u^2 = 108/59 and
    # p = 1 - F = 1/2 - (3/8) sqrt(108/59) (50/59) = 0.0700330
    assert by_k[5.0]["t"] == pytest.approx(math.sqrt(27 / 8))
    assert by_k[5.0]["df"] == pytest.approx(4.0)
    assert by_k[5.0]["p"] == pytest.approx(0.0700330, abs=1e-7)
    # Holm over the scope's four: sorted p, p, p, 1 -> 4p, 4p, 4p, max(4p, 1 x 1)
    assert [t["p_holm"] for t in tests] == pytest.approx([0.2801320] * 3 + [1.0], abs=1e-6)


def test_every_family_gets_the_same_tuning_budget_and_validation_chooses():
    b = BUDGETS["standard"]
    tasks = tuning_tasks("digits", b, ("depth1",))
    per_family = {f: sum(t.family == f for t in tasks) for f in b.families}
    assert len(set(per_family.values())) == 1, per_family
    assert {t.dreg for t in tasks if not FAMILY_BY_NAME[t.family].dreg} == {0.0}
    # every family tries the same learning rates (tests/test_fairfight_ladder.py has more)
    assert len({tuple(sorted({t.lr for t in tasks if t.family == f})) for f in b.families}) == 1
    records = [
        {
            "family": "cr",
            "arch": "depth1",
            "lr": 1e-3,
            "dreg": 1e-3,
            "val_accuracy": 0.8,
            "test_accuracy": 0.99,
        },
        {
            "family": "cr",
            "arch": "depth1",
            "lr": 8e-3,
            "dreg": 1e-2,
            "val_accuracy": 0.9,
            "test_accuracy": 0.10,
        },
    ]
    assert choose(records)[("cr", "depth1")][:2] == (8e-3, 1e-2)


def test_shifts_move_each_spatial_axis_both_ways_with_edges_replicated():
    x = np.arange(10, dtype=np.float32).reshape(1, 1, 10)  # one length-10 signal: k = 1
    right, left = shifts(x)
    assert right[0, 0].tolist() == [0, 0, 1, 2, 3, 4, 5, 6, 7, 8]
    assert left[0, 0].tolist() == [1, 2, 3, 4, 5, 6, 7, 8, 9, 9]
    assert len(shifts(np.zeros((2, 1, 8, 8), np.float32))) == 4


def test_cli_refuses_a_bad_worker_count():
    result = CliRunner().invoke(cli, ["fairfight", "--workers", "0"])
    assert result.exit_code == 2 and "--workers" in result.output


# ---- the engine on the quick budget ---------------------------------------------------


class _Interrupt(Exception):
    pass


def _records(out: Path) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in sorted((out / "records").glob("*.json"))}


@pytest.fixture(scope="module")
def pool_fight(tmp_path_factory) -> Path:
    """The quick fight in a 2-process pool, interrupted after 10 runs and resumed."""
    out = tmp_path_factory.mktemp("ff") / "pool"

    def phase(name):
        def update(done, total, run):
            if name == "ladder" and done >= 10:
                raise _Interrupt

        return update

    with pytest.raises(_Interrupt):
        fairfight("digits", "quick", out, engine=Engine(workers=2), progress=phase)
    before = {p.name: p.stat().st_mtime_ns for p in (out / "records").glob("*.json")}
    assert not (out / "report.json").exists()
    report = fairfight("digits", "quick", out, engine=Engine(workers=2))
    after = {p.name: p.stat().st_mtime_ns for p in (out / "records").glob("*.json")}
    assert all(after[name] == t for name, t in before.items()), "a finished run was redone"
    assert report["execution"]["reused"] == len(before) > 10
    assert report["execution"]["ran"] == report["execution"]["tasks"] - len(before)
    return out


@pytest.mark.slow
def test_an_interrupted_fight_resumes_and_reports(pool_fight: Path):
    report = json.loads((pool_fight / "report.json").read_text())
    assert len(_records(pool_fight)) == report["execution"]["tasks"]
    v = report["verdict"]
    assert v["parameter_ratio_ci"] is None or v["parameter_ratio_ci"]["high"] is not None
    held = {c["held"] for c in v["claims"]}
    assert held <= {"yes", "partly", "no", "undecided", "—"}
    rows = {(r["runtime"], r["batch"]) for r in report["latency"]["rows"]}
    assert rows == {(rt, b) for rt in ("cpu", "executorch-xnnpack") for b in (1, 64)}
    assert all(r["p10"] <= r["ratio"] <= r["p90"] for r in report["latency"]["rows"])
    md = (pool_fight / "report.md").read_text()
    assert "| claim | paper | measured | held |" in md
    assert (pool_fight / "accuracy_vs_parameters.png").stat().st_size > 1000


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_a_ray_cluster_gives_the_process_pools_records(pool_fight: Path, tmp_path: Path):
    pytest.importorskip("ray", reason="ray is in the cluster extra, which `all` installs")
    ray_bin = Path(sys.executable).with_name("ray")
    port = _free_port()
    # Ray's unix sockets live under --temp-dir, and a socket path may not exceed 107 bytes
    ray_tmp = tempfile.mkdtemp(prefix="ray-", dir="/tmp")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    # --block keeps the head in the foreground; ending its process group ends our cluster only
    head = subprocess.Popen(
        [
            str(ray_bin),
            "start",
            "--head",
            "--block",
            "--node-ip-address",
            "127.0.0.1",
            f"--port={port}",
            "--num-cpus=2",
            "--include-dashboard=false",
            "--disable-usage-stats",
            "--object-store-memory=100000000",
            f"--temp-dir={ray_tmp}",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        out = tmp_path / "ray-fight"
        for _ in range(60):  # the head takes a few seconds to listen
            assert head.poll() is None, "ray start --head exited; see `ray start --head --block`"
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(1)
        report = fairfight(
            "digits", "quick", out, engine=Engine(ray=f"127.0.0.1:{port}"), latency=False
        )
        assert report["execution"]["ray"] == f"127.0.0.1:{port}"
        ray_records, pool_records = _records(out), _records(pool_fight)
        assert ray_records.keys() == pool_records.keys()
        for key, rec in ray_records.items():
            assert rec == pool_records[key], key
    finally:
        # Ctrl-C is what `ray start --block` stops on; whatever outlives it is killed
        os.killpg(head.pid, signal.SIGINT)
        try:
            head.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait(timeout=30)
        shutil.rmtree(ray_tmp, ignore_errors=True)
