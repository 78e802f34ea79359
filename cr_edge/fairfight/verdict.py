"""From run records to the claims, each decided by an interval or a corrected test.

Pure functions over plain records (the dicts in ``report.json``). The figure compared is
the task's (``metric.Metric``): accuracy, or MAE for regression, read as a score where
higher is better, so "reaching T", "at least as good" and every difference's sign mean
the same for every task (a positive difference favours CR).

Validation chooses, test reports: every choice below (T, the points that reach it, each
"smallest net reaching T", the nets a test compares, the nets whose robustness is
compared) is made on *validation* means; test scores are reported for the chosen points
only, so a permutation of the test labels changes no choice. A ladder point counts only
with at least ``MIN_SEEDS`` finished runs (else it is "insufficient" and left out).

The question is asked per architecture (MLP against MLP, conv against conv) and across
them. Definitions, for accuracy:

* equal accuracy: T = the best baseline ladder point's mean validation accuracy - 0.5
  points (for MAE: the best baseline MAE + 1%); the parameter ratio is
  params(smallest baseline point reaching T) / params(smallest CR point reaching T), with
  a bootstrap interval over seeds (a resample where no CR point reaches T counts as a
  ratio below every other);
* "CR is at least as accurate as baseline B with k x fewer parameters": Welch's t,
  one-sided, non-inferiority margin 0.5 points, on test scores, B's best point and the
  best CR point with ``k x params(CR) <= (1 + MATCH) x params(B)`` both chosen on
  validation; k = 1 therefore pairs parameter-matched nets (within 5%: a CR net's
  polynomial coefficients make it a few percent larger than the baseline of its width).
  Holm-corrected over every (B, k) of one scope (MLP, conv, all);
* robustness: the drop from clean to mean corrupted score per run (noise x3, shift), CR's
  against the baseline's, Welch interval of the difference, at each architecture's best
  net of either family (chosen on validation); absolute corrupted scores beside it;
* tau = p99 / mean and peak volatility = max of a set of gradient norms; per run once
  over the test samples' input gradients ``||d logit_pred / dx||`` and once over the
  training steps' parameter gradients ``||d loss / d theta||``.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable

import numpy as np

from cr_edge.fairfight.metric import ACCURACY, Metric
from cr_edge.fairfight.stats import Interval, bootstrap, holm, mean_ci, welch

BASELINES = ("relu", "gelu")  # the standard nets, trained without DREG
CR_FAMILY = "cr"
ALPHA = 0.05
K_FACTORS = (1.0, 2.0, 5.0, 15.5)  # "k x fewer parameters" tested at these k
MATCH = 0.05  # parameter budgets within 5% count as equal (k = 1 pairs same-width nets)
MIN_SEEDS = 3  # finished runs a ladder point needs to count
# Scopes of every question: each architecture against itself, and all of them together.
SCOPES = {"mlp": ("depth1", "depth2"), "conv": ("conv",), "all": None}
PAPER = {
    "parameter_ratio": 15.5,
    "peak_volatility_change": -0.231,
    "tail_ratio_cr": (1.01, 1.02),
    "tail_ratio_standard": (1.07, 1.09),
    "corruption_gain": 0.0232,
}
Point = tuple[str, str, int]  # (family, arch, width)
# The hardware-efficiency target: wherever CR needs at least LATENCY_MIN_RATIO x fewer
# parameters at equal accuracy, its batch-LATENCY_BATCH latency is at most LATENCY_TARGET x the
# baseline's.
LATENCY_MIN_RATIO, LATENCY_BATCH, LATENCY_TARGET = 5.0, 64, 1 / 3


def _by_point(records: list[dict]) -> dict[Point, list[dict]]:
    groups: dict[Point, list[dict]] = defaultdict(list)
    for r in records:
        groups[(r["family"], r["arch"], r["width"])].append(r)
    return dict(sorted(groups.items()))


def _mean(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def in_scope(records: list[dict], scope: str) -> list[dict]:
    """The records of one scope's architectures (``SCOPES``)."""
    archs = SCOPES[scope]
    return [r for r in records if archs is None or r["arch"] in archs]


def sufficient(records: list[dict]) -> tuple[list[dict], list[Point]]:
    """The finished records of points with at least ``MIN_SEEDS`` of them, and the other
    (insufficient) points."""
    finished = [r for r in records if not r.get("failed")]
    counted = {p for p, rs in _by_point(finished).items() if len(rs) >= MIN_SEEDS}
    points = set(_by_point(records))
    kept = [r for r in finished if (r["family"], r["arch"], r["width"]) in counted]
    return kept, sorted(points - counted)


def corruption_mean(record: dict) -> float | None:
    """Mean score over every corruption of one run (three noise levels and the shift)."""
    c = record.get("corruption") or {}
    return _mean(list(c.values()))


def aggregate(records: list[dict], metric: Metric = ACCURACY) -> list[dict]:
    """One row per ladder point: validation and test means with their 95% CIs, per-run means
    of the other columns, and whether the point has the ``MIN_SEEDS`` finished runs it needs.
    Failed runs are counted, not averaged."""
    rows = []
    k = metric.key
    for (family, arch, width), runs in _by_point(records).items():
        done = [r for r in runs if not r.get("failed")]
        row = {
            "family": family,
            "arch": arch,
            "width": width,
            "seeds": len(done),
            "failed": len(runs) - len(done),
            "insufficient": len(done) < MIN_SEEDS,
        }
        if not done:
            rows.append(row)
            continue
        acc, val = mean_ci([r[f"test_{k}"] for r in done]), mean_ci([r[f"val_{k}"] for r in done])
        rows.append(
            row
            | {
                "parameters": done[0]["parameters"],
                k: acc.estimate,
                f"{k}_ci": [acc.low, acc.high],
                f"val_{k}": val.estimate,
                f"val_{k}_ci": [val.low, val.high],
                "tail_ratio": _mean([r["tail_ratio"] for r in done]),
                "peak_volatility": _mean([r["peak_volatility"] for r in done]),
                "step_tail_ratio": _mean([r["step_tail_ratio"] for r in done]),
                "step_peak_volatility": _mean([r["step_peak_volatility"] for r in done]),
                "corruption": _mean([corruption_mean(r) for r in done]),
            }
        )
    return rows


def equal_accuracy(records: list[dict], metric: Metric = ACCURACY) -> dict | None:
    """T and the smallest baseline and CR points reaching it, all chosen on validation means.

    ``test`` holds the chosen points' mean test scores (as the metric's values), reported,
    never compared. None without a baseline point.
    """
    val: dict[Point, list[float]] = defaultdict(list)
    params: dict[Point, int] = {}
    for r in records:
        p = (r["family"], r["arch"], r["width"])
        val[p].append(metric.score(r[f"val_{metric.key}"]))
        params[p] = r["parameters"]
    score = {p: float(np.mean(v)) for p, v in val.items()}
    base = [p for p in score if p[0] in BASELINES]
    if not base:
        return None
    best = max(base, key=lambda p: (score[p], -params[p]))
    threshold = score[best] - metric.slack(score[best])  # a score; reported as the metric's value

    def smallest(points: list[Point]) -> Point | None:
        reaching = [p for p in points if score[p] >= threshold]
        return min(reaching, key=lambda p: (params[p], -score[p])) if reaching else None

    base_t = smallest(base)
    cr_t = smallest([p for p in score if p[0] == CR_FAMILY])
    return {
        "threshold": metric.score(threshold),
        "best_baseline": best,
        "baseline": base_t,
        "cr": cr_t,
        "parameters": {"baseline": params[base_t], "cr": params[cr_t] if cr_t else None},
        "ratio": params[base_t] / params[cr_t] if cr_t else None,
        "test": {
            role: _test_mean(records, p, metric)
            for role, p in (("best_baseline", best), ("baseline", base_t), ("cr", cr_t))
            if p is not None
        },
    }


def _test_mean(records: list[dict], point: Point, metric: Metric) -> dict:
    """A chosen point's test metric, mean with its 95% CI (the metric's own values)."""
    runs = [r for r in records if (r["family"], r["arch"], r["width"]) == point]
    return mean_ci([r[f"test_{metric.key}"] for r in runs]).to_json()


def seed_slot(record: dict) -> int:
    """The seed a run stands for: its own, or, for the retry of a diverged run, the seed
    it replaces (so a bootstrap resample keeps each seed's runs together)."""
    return record.get("retry_of_seed", record["seed"])


def _by_seed(records: list[dict]) -> list[list[dict]]:
    seeds: dict[int, list[dict]] = defaultdict(list)
    for r in records:
        seeds[seed_slot(r)].append(r)
    return [seeds[s] for s in sorted(seeds)]


def _flat(groups: list[list[dict]]) -> list[dict]:
    return [r for g in groups for r in g]


def _seed_bootstrap(
    records: list[dict], stat: Callable[[list[dict]], float | None], n_boot: int
) -> Interval | None:
    return bootstrap(_by_seed(records), lambda gs: stat(_flat(gs)), n_boot)


def fewer_parameters_tests(records: list[dict], metric: Metric = ACCURACY) -> list[dict]:
    """Welch + Holm for "CR at least as accurate as B with k x fewer parameters", per scope.

    Within each scope (``SCOPES``): B's best point and the best CR point with
    ``k x params <= (1 + MATCH) x params(B)``, both on validation means; Welch on test
    scores; Holm over the scope's rows (each scope is one claim).
    """
    tests = []
    k = metric.key
    for scope in SCOPES:
        groups = _by_point(in_scope(records, scope))
        if not any(p[0] == CR_FAMILY for p in groups):
            continue

        def scores(p: Point, split: str = "test", groups: dict = groups) -> list[float]:
            return [metric.score(r[f"{split}_{k}"]) for r in groups[p]]

        val = {p: _mean(scores(p, "val")) for p in groups}
        params = {p: rs[0]["parameters"] for p, rs in groups.items()}
        rows = []
        for b in BASELINES:
            b_points = [p for p in groups if p[0] == b]
            if not b_points:
                continue
            bp = max(b_points, key=lambda p: (val[p], -params[p]))  # B's best, on validation
            for factor in K_FACTORS:
                small = [
                    p
                    for p in groups
                    if p[0] == CR_FAMILY and params[p] * factor <= (1 + MATCH) * params[bp]
                ]
                test = {
                    "scope": scope,
                    "baseline": list(bp),
                    "k": factor,
                    "baseline_parameters": params[bp],
                }
                if small:
                    cp = max(small, key=lambda p: (val[p], -params[p]))
                    w = welch(scores(cp), scores(bp), margin=metric.slack(_mean(scores(bp))))
                    test.update(cr=list(cp), cr_parameters=params[cp], **w.to_json())
                    if factor == 1.0:  # parameter-matched only if the ladder has such a CR net
                        test["matched"] = params[cp] >= params[bp] / (1 + MATCH)
                else:
                    test.update(
                        cr=None, cr_parameters=None, difference=None, t=None, df=None, p=1.0
                    )
                    if factor == 1.0:
                        test["matched"] = False
                rows.append(test)
        for test, adj in zip(rows, holm([t["p"] for t in rows]), strict=True):
            test["p_holm"] = adj
            test["held"] = adj < ALPHA
        tests += rows
    return tests


def robustness(records: list[dict], metric: Metric = ACCURACY) -> list[dict]:
    """Per architecture: the drop from clean to corrupted score, CR's against the baseline's.

    The two nets are the architecture's best CR point and best baseline point (the
    baseline family whose point is best), both on validation means. ``drop`` per run is
    ``score(clean) - score(mean corrupted)``: positive is a loss, for accuracy and MAE
    alike. ``difference`` = baseline drop - CR drop (positive favours CR) with its Welch
    interval; the absolute corrupted scores are reported beside it, in the metric's units.
    """
    k = metric.key
    out = []
    for arch in sorted({r["arch"] for r in records}):
        groups = {
            p: [r for r in rs if corruption_mean(r) is not None]
            for p, rs in _by_point([r for r in records if r["arch"] == arch]).items()
        }
        groups = {p: rs for p, rs in groups.items() if len(rs) >= 2}
        val = {p: _mean([metric.score(r[f"val_{k}"]) for r in rs]) for p, rs in groups.items()}
        best = {}
        for role, families in (("cr", (CR_FAMILY,)), ("baseline", BASELINES)):
            points = [p for p in groups if p[0] in families]
            if points:
                best[role] = max(points, key=lambda p: (val[p], -p[2]))
        if len(best) < 2:
            continue

        def drops(p: Point, groups: dict = groups) -> list[float]:
            return [
                metric.score(r[f"test_{k}"]) - metric.score(corruption_mean(r)) for r in groups[p]
            ]

        w = welch(drops(best["baseline"]), drops(best["cr"]))
        row = {"arch": arch, "difference": w.difference, "interval": w.interval().to_json()}
        for role, p in best.items():
            runs = groups[p]
            row[role] = {
                "point": list(p),
                "drop": mean_ci(drops(p)).to_json(),
                "clean": mean_ci([r[f"test_{k}"] for r in runs]).to_json(),
                "corrupted": mean_ci([corruption_mean(r) for r in runs]).to_json(),
            }
        out.append(row)
    return out


def _probe_comparison(
    probe: list[dict], fractions: list[float], base_family: str, value: Callable[[dict], float]
) -> list[dict]:
    """CR vs ``base_family`` at each training fraction: means, Welch (superiority), Holm."""
    out = []
    for f in fractions:
        cr = [value(r) for r in probe if r["family"] == CR_FAMILY and r["fraction"] == f]
        base = [value(r) for r in probe if r["family"] == base_family and r["fraction"] == f]
        if len(cr) < 2 or len(base) < 2:
            continue
        w = welch(cr, base)
        out.append(
            {
                "fraction": f,
                "cr": mean_ci(cr).to_json(),
                "baseline": mean_ci(base).to_json(),
                **w.to_json(),
            }
        )
    for row, adj in zip(out, holm([r["p"] for r in out]), strict=True):
        row["p_holm"] = adj
    return out


def verdict(records: list[dict], n_boot: int = 1000, metric: Metric = ACCURACY) -> dict:
    """Every finding, with the configurations it compares and its interval or test.

    Runs whose training failed (the training watch stopped them) are left out and counted,
    as are the retries of diverged runs; a ladder point with fewer than ``MIN_SEEDS``
    finished runs is "insufficient": listed, and left out of every choice.
    """
    failed = [r["key"] for r in records if r.get("failed")]
    ladder, insufficient = sufficient([r for r in records if r["phase"] == "ladder"])
    records = [r for r in records if not r.get("failed")]
    scopes = {s: _equal_accuracy_scope(in_scope(ladder, s), n_boot, metric) for s in SCOPES}
    overall = scopes.pop("all")
    if overall is None:
        raise ValueError(
            f"a verdict needs ladder points of the cr family and of a baseline family with "
            f"at least {MIN_SEEDS} finished runs each"
        )
    base_family = overall["baseline_family"]

    def family_mean(family: str, key: str) -> Callable[[list[dict]], float | None]:
        return lambda rs: _mean([r.get(key) for r in rs if r["family"] == family])

    smooth = {}
    for key in (
        "peak_volatility",
        "tail_ratio",
        "step_peak_volatility",
        "step_tail_ratio",
        "test_batch_tail_ratio",  # the reading that puts baselines near the papers' tau
    ):
        cr_ci = _seed_bootstrap(ladder, family_mean(CR_FAMILY, key), n_boot)
        base_ci = _seed_bootstrap(ladder, family_mean(base_family, key), n_boot)

        def change(rs: list[dict], key: str = key) -> float | None:
            c, b = family_mean(CR_FAMILY, key)(rs), family_mean(base_family, key)(rs)
            return c / b - 1.0 if c is not None and b else None

        smooth[key] = {
            "cr": cr_ci.to_json() if cr_ci else None,
            "baseline": base_ci.to_json() if base_ci else None,
            "change": (lambda ci: ci.to_json() if ci else None)(
                _seed_bootstrap(ladder, change, n_boot)
            ),
        }
    probes = probe_points(records, ladder, metric)
    out = {
        "failed_runs": failed,
        "retries": retry_counts([*records, *[{"failed": k} for k in failed]]),
        "min_seeds": MIN_SEEDS,
        "insufficient_points": [list(p) for p in insufficient],
        **overall,
        "by_architecture": scopes,
        "fewer_parameters_tests": fewer_parameters_tests(ladder, metric),
        "smoothness": smooth,
        "probes": [{k: v for k, v in p.items() if k != "runs"} for p in probes],
        "sample_efficiency": [
            {"arch": p["arch"], "baseline_family": p["baseline_family"], **row}
            for p in probes
            for row in _probe_comparison(
                p["runs"],
                sorted({r["fraction"] for r in p["runs"]}),
                p["baseline_family"],
                lambda r: metric.score(r[f"test_{metric.key}"]),
            )
        ],
        "robustness": robustness(ladder, metric),
    }
    out["claims"] = claims(out, metric)
    return out


def _equal_accuracy_scope(ladder: list[dict], n_boot: int, metric: Metric) -> dict | None:
    """``equal_accuracy`` on one scope's ladder runs, with the ratio's bootstrap interval."""
    eq = equal_accuracy(ladder, metric)
    if eq is None or not any(r["family"] == CR_FAMILY for r in ladder):
        return None
    ratio_ci = _seed_bootstrap(
        ladder, lambda rs: (equal_accuracy(rs, metric) or {}).get("ratio"), n_boot
    )
    return {
        "threshold": eq["threshold"],
        "best_baseline": list(eq["best_baseline"]),
        "baseline_family": eq["best_baseline"][0],
        "smallest_baseline_at_threshold": list(eq["baseline"]),
        "smallest_cr_at_threshold": list(eq["cr"]) if eq["cr"] else None,
        "parameters": eq["parameters"],
        "parameter_ratio": eq["ratio"],
        "parameter_ratio_ci": ratio_ci.to_json() if ratio_ci else None,
        "test_at_chosen_points": eq["test"],
    }


def retry_counts(records: list[dict]) -> dict[str, int]:
    """Diverged runs (first attempts whose training failed), their retries with the next
    seed, and how many of those finished."""
    retries = [r for r in records if "retry_of" in r]
    first_failed = sum(1 for r in records if r.get("failed") and "retry_of" not in r)
    return {
        "diverged": first_failed,
        "retried": len(retries),
        "recovered": sum(1 for r in retries if not r.get("failed")),
    }


def probe_points(records: list[dict], ladder: list[dict], metric: Metric = ACCURACY) -> list[dict]:
    """Per probed architecture: its probe width, the baseline family it is compared with
    (the family of that architecture's best baseline ladder point, on validation), and its
    runs: the probes on fractions of the data plus the ladder's runs at that width (100%)."""
    out = []
    probe = [r for r in records if r["phase"] == "probe" and not r.get("failed")]
    for arch in sorted({r["arch"] for r in probe}, key=lambda a: (a != "depth1", a)):
        width = min(r["width"] for r in probe if r["arch"] == arch)
        base = best_baseline_family(ladder, arch, metric)
        if base is None:
            continue
        runs = [r for r in probe if r["arch"] == arch and r["width"] == width] + [
            r for r in ladder if r["arch"] == arch and r["width"] == width
        ]
        out.append({"arch": arch, "width": width, "baseline_family": base, "runs": runs})
    return out


def best_baseline_family(ladder: list[dict], arch: str, metric: Metric = ACCURACY) -> str | None:
    """The family of ``arch``'s best baseline ladder point by mean validation score."""
    points = {p: rs for p, rs in _by_point(ladder).items() if p[1] == arch and p[0] in BASELINES}
    if not points:
        return None
    k = f"val_{metric.key}"
    best = max(points, key=lambda p: _mean([metric.score(r[k]) for r in points[p]]))
    return best[0]


SCOPE_NAMES = {"all": "all architectures", "mlp": "MLP vs MLP", "conv": "conv vs conv"}


def claims(v: dict, metric: Metric = ACCURACY) -> list[dict]:
    """Each of the papers' claims beside what was measured and whether it held.

    Decided on the 95% interval (or the Holm-corrected tests): ``yes`` when it clears the
    papers' magnitude, ``partly`` when it clears "no effect" in the papers' direction only,
    ``no`` when it lies wholly on the other side, ``undecided`` when it straddles no effect.
    The parameter claims are decided per scope (each architecture, and all together).
    """
    base = v["baseline_family"]
    out = []
    scopes = {"all": v, **v.get("by_architecture", {})}
    for scope, sv in scopes.items():
        name = f"parameters at equal {metric.name} ({SCOPE_NAMES[scope]})"
        if sv is None:
            out.append(_claim(name, "15.5x fewer", "no CR and baseline points to compare", "—"))
            continue
        ci = sv["parameter_ratio_ci"]
        if sv["parameter_ratio"] is None or not ci:
            out.append(_claim(name, "15.5x fewer", "CR never reached T", "no"))
            continue
        lo = -math.inf if ci["low"] is None else ci["low"]  # -inf: some resamples never reached T
        hi = ci["high"]
        out.append(
            _claim(
                name,
                "15.5x fewer",
                f"{sv['parameter_ratio']:.2f}x [{_x(lo)}, {_x(hi)}]",
                decide(lo, hi, 1.0, PAPER["parameter_ratio"]),
            )
        )
    for scope in scopes:
        tests = [t for t in v["fewer_parameters_tests"] if t.get("scope", "all") == scope]
        if not tests:
            continue
        ks = [k for k in K_FACTORS if all(t["held"] for t in tests if t["k"] == k)]
        out.append(
            _claim(
                f"CR >= every baseline with k x fewer parameters ({SCOPE_NAMES[scope]}; "
                "Welch, Holm)",
                "k = 15.5",
                f"held for k = {', '.join(f'{k:g}' for k in ks)}" if ks else "held for no k",
                "yes" if 15.5 in ks else "partly" if any(k > 1 for k in ks) else "no",
            )
        )
    for key, name in (
        ("peak_volatility", "peak input-gradient norm (max/median over test samples)"),
        ("step_peak_volatility", "peak training-step gradient norm (max/median over steps)"),
    ):
        c = v["smoothness"][key]["change"]
        measured, held = "—", "—"
        if c is not None and c["low"] is not None:
            measured = f"{c['estimate']:+.1%} [{c['low']:+.1%}, {c['high']:+.1%}] vs {base}"
            # lower is better: decide on the negated change
            held = decide(-c["high"], -c["low"], 0.0, -PAPER["peak_volatility_change"])
        out.append(_claim(name, "-23.1% (MNIST)", measured, held))
    for key, name in (
        ("tail_ratio", "tau = p99/mean of input-gradient norms"),
        (
            "test_batch_tail_ratio",
            "tau = p99/mean of input-gradient norms averaged per training-size batch",
        ),
        ("step_tail_ratio", "tau = p99/mean of training-step gradient norms (W, b, no DREG)"),
    ):
        if key not in v["smoothness"]:  # verdicts from before the reading existed
            continue
        s = v["smoothness"][key]
        cr_ci, base_ci, c = s["cr"], s["baseline"], s["change"]
        measured, held = "—", "—"
        if cr_ci and base_ci and c and c["low"] is not None:
            measured = (
                f"{cr_ci['estimate']:.3f} [{cr_ci['low']:.3f}, {cr_ci['high']:.3f}] (CR) vs "
                f"{base_ci['estimate']:.3f} [{base_ci['low']:.3f}, {base_ci['high']:.3f}] ({base})"
            )
            held = decide(-c["high"], -c["low"], 0.0, None)
            at_paper = (
                cr_ci["high"] <= PAPER["tail_ratio_cr"][1]
                and base_ci["low"] >= PAPER["tail_ratio_standard"][0]
            )
            held = "yes" if at_paper else "partly" if held == "yes" else held
        out.append(_claim(name, "1.01-1.02 (CR) vs 1.07-1.09", measured, held))
    for p in v.get("probes", []):
        se = [r for r in v["sample_efficiency"] if r.get("arch", "depth1") == p["arch"]]
        wins = [r for r in se if r["p_holm"] < ALPHA]
        out.append(
            _claim(
                ("more accurate" if metric.higher_is_better else f"lower {metric.name}")
                + f" at every training fraction, {p['arch']} w{p['width']} vs "
                f"{p['baseline_family']} (equal optimiser steps; Welch, Holm)",
                "across every data fraction",
                ", ".join(f"{r['fraction']:.0%}: {r['difference']:+.4f}" for r in se) or "—",
                "yes" if se and len(wins) == len(se) else "partly" if wins else "no",
            )
        )
    for r in v["robustness"]:
        i, cr, b = r["interval"], r["cr"], r["baseline"]
        out.append(
            _claim(
                f"smaller drop under corruption, {r['arch']} (noise x3, shift; "
                "baseline drop - CR drop)",
                "+2.32 points absolute (CIFAR-10-C)",
                f"{r['difference']:+.4f} [{_f(i['low'])}, {_f(i['high'])}]: CR "
                f"{_point(cr['point'])} drops {cr['drop']['estimate']:.4f} to "
                f"{cr['corrupted']['estimate']:.4f}, {_point(b['point'])} drops "
                f"{b['drop']['estimate']:.4f} to {b['corrupted']['estimate']:.4f}",
                # the papers' figure is an absolute gain, so a drop is tested against 0 only
                decide(i["low"], i["high"], 0.0, None),
            )
        )
    return out


def _f(value: float | None) -> str:
    return "—" if value is None else f"{value:+.4f}"


def _point(p: list) -> str:
    return f"{p[0]} {p[1]} w{p[2]}"


def decide(lo: float | None, hi: float | None, null: float, paper: float | None) -> str:
    """An interval [lo, hi] against no effect (``null``) and the papers' magnitude."""
    if lo is None or hi is None:
        return "no"
    if paper is not None and lo >= paper:
        return "yes"
    if lo > null:
        return "partly" if paper is not None else "yes"
    if hi < null:
        return "no"
    return "undecided"


def latency_target(parameter_ratio: float | None, rows: list[dict]) -> list[dict]:
    """Per runtime, the batch-64 CR/baseline latency against 1/3, read from its spread.

    ``held`` is *yes* when the whole p10-p90 spread lies at or under the target, *no* when
    it lies above, *undecided* otherwise, and *not tested* where the parameter ratio is
    under 5x (the target makes no claim there; the ratio is still shown).
    """
    applies = parameter_ratio is not None and parameter_ratio >= LATENCY_MIN_RATIO
    out = []
    for r in rows:
        if r["batch"] != LATENCY_BATCH:
            continue
        if not applies:
            held = "not tested"
        elif r["p90"] <= LATENCY_TARGET:
            held = "yes"
        elif r["p10"] > LATENCY_TARGET:
            held = "no"
        else:
            held = "undecided"
        out.append({"runtime": r["runtime"], "ratio": r["ratio"], "held": held})
    return out


def _claim(claim: str, paper: str, measured: str, held: str) -> dict:
    return {"claim": claim, "paper": paper, "measured": measured, "held": held}


def _x(v: float | None) -> str:
    return "not reached" if v is None or not math.isfinite(v) else f"{v:.2f}x"
