"""The Fair Fight's report: Markdown for people, JSON for machines, a PNG plot.

Every figure in ``report.md`` is read from ``report.json``, never typed in, so the
Markdown and the JSON cannot disagree.
"""

from __future__ import annotations

import io
from collections import defaultdict
from pathlib import Path

import numpy as np

from cr_edge.artifacts import atomic
from cr_edge.fairfight.ladder import FAMILIES, Setting
from cr_edge.fairfight.metric import ACCURACY, METRICS, Metric
from cr_edge.fairfight.runner import LATE_SHARE
from cr_edge.fairfight.stats import mean_ci
from cr_edge.fairfight.verdict import (
    BASELINES,
    CR_FAMILY,
    LATENCY_BATCH,
    LATENCY_MIN_RATIO,
    LATENCY_TARGET,
    MATCH,
    MIN_SEEDS,
    PAPER,
    SCOPE_NAMES,
    aggregate,
    latency_target,
)

FAMILY_COLOURS = {
    "cr": "tab:red",
    "cr-nodreg": "tab:orange",
    "relu": "tab:blue",
    "relu-dreg": "tab:cyan",
    "gelu": "tab:green",
    "gelu-dreg": "tab:olive",
}
ARCH_MARKERS = {"depth1": "o", "depth2": "s", "conv": "^"}
# The report flags a fight in which more than this share of runs peaked late (``late_best``).
LATE_FLAG = 0.05
DEFINITIONS = (
    "Definitions. *tau* = p99 / mean and *peak volatility* = max / median of a set of "
    "gradient norms. Per run they are computed over: the test samples' input-gradient norms "
    "||d logit_pred / dx|| of the trained net (`tail_ratio`, `peak_volatility`; the raw "
    "max is `peak_gradient`), those norms averaged over mini-batches of the training batch "
    "size (`test_batch_*`), the mini-batch mean input-gradient norm over training steps "
    "(`batch_*`), and the task loss's gradient norm over the shared weights W, b without "
    "DREG over training steps (`step_*`; the old all-parameter reading is "
    "`all_step_tail_ratio`). "
    "Corruptions: Gaussian noise with sigma = 0.1, 0.25, 0.5 x the training inputs' std, "
    "and a shift by 10% of each spatial axis both ways (1 pixel on digits, 4 steps on "
    "MNIST-1D), edges replicated. Intervals are 95%: Student-t for means over seeds, "
    "percentile bootstrap over seeds (resampled jointly) for ratios."
)


def _f(value: float | None, fmt: str = ".4f") -> str:
    return "—" if value is None else format(value, fmt)


def _short(n: int) -> str:
    return f"{n / 1000:.1f}k" if n >= 1000 else str(n)


def _point(p: list | None) -> str:
    return "—" if p is None else f"{p[0]} {p[1]} w{p[2]}"


def _metric(report: dict) -> Metric:
    return METRICS[report.get("task", "classify")]  # reports written before tasks classified


def ladder_matrix(rows: list[dict], metric: Metric = ACCURACY) -> list[str]:
    """The *validation* metric's mean ± CI half-width (parameters) per (family, arch) and
    width: what every choice is made on. A point short of ``MIN_SEEDS`` finished runs says so.
    """
    widths = sorted({r["width"] for r in rows})
    cells: dict[tuple[str, str], dict[int, str]] = defaultdict(dict)
    k = f"val_{metric.key}"
    for r in rows:
        if r.get("insufficient") or k not in r:
            cells[(r["family"], r["arch"])][r["width"]] = (
                f"insufficient ({r['seeds']} of {MIN_SEEDS} seeds)"
            )
            continue
        ci = r.get(f"{k}_ci") or [r[k], r[k]]
        cells[(r["family"], r["arch"])][r["width"]] = (
            f"{r[k]:.3f}±{(ci[1] - ci[0]) / 2:.3f} ({_short(r['parameters'])})"
        )
    order = [f.name for f in FAMILIES]
    lines = [
        "| family | arch | " + " | ".join(f"w{w}" for w in widths) + " |",
        "|---|---|" + "---|" * len(widths),
    ]
    for (family, arch), row in sorted(
        cells.items(), key=lambda kv: (order.index(kv[0][0]), kv[0][1])
    ):
        lines.append(f"| {family} | {arch} | " + " | ".join(row.get(w, "") for w in widths) + " |")
    return lines


def _equal_accuracy_lines(v: dict, metric: Metric) -> list[str]:
    """Per scope: T, the smallest points reaching it (chosen on validation), their test
    scores (reported only), and the parameter ratio with its interval."""
    sign = "-" if metric.higher_is_better else "+"
    lines = [
        "",
        f"Equal {metric.name}, chosen on validation: T = the best baseline point's mean "
        f"validation {metric.name} {sign} {metric.slack_text()}; the smallest points whose "
        f"validation mean reaches T; test {metric.name} (mean [95% CI]) is reported for the "
        "chosen points only.",
        "",
        "| scope | T (val) | best baseline | smallest baseline at T (test) | smallest CR at T "
        "(test) | parameter ratio [95% CI] |",
        "|---|---|---|---|---|---|",
    ]
    for scope, sv in {"all": v, **v.get("by_architecture", {})}.items():
        if sv is None:
            lines.append(f"| {SCOPE_NAMES[scope]} | — | — | — | — | — |")
            continue
        test = sv.get("test_at_chosen_points", {})
        ci = sv["parameter_ratio_ci"]
        ratio = f"**{_f(sv['parameter_ratio'], '.2f')}x**" + (
            f" [{_f(ci['low'], '.2f')}, {_f(ci['high'], '.2f')}]" if ci else ""
        )
        lines.append(
            f"| {SCOPE_NAMES[scope]} | {sv['threshold']:.4f} | {_point(sv['best_baseline'])} "
            f"{_ci(test.get('best_baseline'))} | "
            f"{_point(sv['smallest_baseline_at_threshold'])} ({sv['parameters']['baseline']}) "
            f"{_ci(test.get('baseline'))} | {_point(sv['smallest_cr_at_threshold'])} "
            f"({sv['parameters']['cr'] or '—'}) {_ci(test.get('cr'))} | {ratio} |"
        )
    return lines


def _ci(ci: dict | None) -> str:
    if not ci:
        return ""
    return f"{ci['estimate']:.4f} [{_f(ci['low'])}, {_f(ci['high'])}]"


def _probe_tables(report: dict) -> list[str]:
    """Per probed architecture (an MLP, a conv net): the test metric at each training
    fraction, every fraction trained for the same number of optimiser steps, and CR's
    difference from that architecture's best baseline family."""
    v = report["verdict"]
    # verdicts from before conv was probed name one probe
    probes = v.get("probes") or [{**v["probe"], "baseline_family": v.get("baseline_family")}]
    metric = _metric(report)
    test = f"test_{metric.key}"
    lines = []
    for p in probes:
        runs = [
            r
            for r in report["runs"]
            if r["phase"] in ("probe", "ladder")
            and not r.get("failed")
            and r["arch"] == p["arch"]
            and r["width"] == p["width"]
        ]
        fractions = sorted({r["fraction"] for r in runs})
        steps = [
            _f(
                np.mean(s)
                if (s := [r["steps"] for r in runs if r["fraction"] == f and "steps" in r])
                else None,
                ".0f",
            )
            for f in fractions
        ]
        lines += [
            "",
            f"Sample efficiency, {p['arch']} w{p['width']} (test {metric.name} mean ± CI "
            "half-width; tau of input gradients), every fraction trained for the whole "
            "split's number of optimiser steps (epochs and patience scaled by 1 / fraction; "
            "mean steps taken: "
            + ", ".join(f"{f:.0%} {n}" for f, n in zip(fractions, steps, strict=True))
            + "):",
            "",
            "| family | " + " | ".join(f"{f:.0%}" for f in fractions) + " |",
            "|---|" + "---|" * len(fractions),
        ]
        for fam in FAMILIES:
            cells = []
            for f in fractions:
                rs = [r for r in runs if r["family"] == fam.name and r["fraction"] == f]
                if not rs:
                    cells.append("")
                    continue
                ci = mean_ci([r[test] for r in rs])
                tau = [r["tail_ratio"] for r in rs if r["tail_ratio"] is not None]
                cells.append(
                    f"{ci.estimate:.3f}±{(ci.high - ci.low) / 2:.3f} "
                    f"(τ {_f(np.mean(tau) if tau else None, '.2f')})"
                )
            if any(cells):  # a family outside the budget has no probes
                lines.append(f"| {fam.name} | " + " | ".join(cells) + " |")
        se = [r for r in v["sample_efficiency"] if r.get("arch", "depth1") == p["arch"]]
        if se and p.get("baseline_family"):
            lines += [
                "",
                f"CR - {p['baseline_family']} (this architecture's best baseline family, on "
                "validation), Welch, Holm over fractions: "
                + "; ".join(
                    f"{r['fraction']:.0%} {_f(r['difference'], '+.4f')} (p Holm {r['p_holm']:.3g})"
                    for r in se
                )
                + ".",
            ]
    return lines


def _robustness_table(report: dict) -> list[str]:
    """Per architecture, the drop from clean to corrupted score of its best CR net and best
    baseline net (both chosen on validation), with 95% CIs; absolute scores beside it."""
    rows = report["verdict"].get("robustness", [])
    if not rows:
        return []
    name = _metric(report).name
    lines = [
        "",
        f"Robustness: drop of test {name} from clean to the mean over corruptions (noise "
        "x3, shift), mean [95% CI]; each architecture's best CR and best baseline net, "
        "chosen on validation; difference = baseline drop - CR drop (Welch interval, "
        "positive favours CR):",
        "",
        f"| arch | net | clean {name} | corrupted {name} | drop | difference |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        i = r["interval"]
        diff = f"{r['difference']:+.4f} [{_f(i['low'], '+.4f')}, {_f(i['high'], '+.4f')}]"
        for role in ("cr", "baseline"):
            x = r[role]
            lines.append(
                f"| {r['arch']} | {_point(x['point'])} | {_ci(x['clean'])} | "
                f"{_ci(x['corrupted'])} | {_ci(x['drop'])} | {diff if role == 'cr' else ''} |"
            )
    return lines


def width_overhead(rows: list[dict]) -> dict[str, list[float]]:
    """Per architecture, CR's parameters / a baseline's at the same width, over the widths
    both have: why a same-width pair is not parameter-matched (the polynomial's
    coefficients)."""
    params = {(r["family"], r["arch"], r["width"]): r.get("parameters") for r in rows}
    out: dict[str, list[float]] = defaultdict(list)
    for (family, arch, width), n in params.items():
        if family != CR_FAMILY or not n:
            continue
        for b in BASELINES:
            m = params.get((b, arch, width))
            if m:
                out[arch].append(n / m)
                break
    return dict(out)


def match_lines(tests: list[dict], rows: list[dict]) -> list[str]:
    """Says, per scope, whether k = 1 paired parameter-matched nets (within ``MATCH``), and
    when the ladder has no CR net that close, what it compared instead."""
    lines = []
    for t in tests:
        if t["k"] != 1 or t.get("matched", True):
            continue
        scope = SCOPE_NAMES[t.get("scope", "all")]
        if t["cr"] is None:
            got = "no CR net at or under that budget, so the test could not run"
        else:
            got = (
                f"the test compares {_point(t['cr'])} ({t['cr_parameters']} parameters, "
                f"{t['cr_parameters'] / t['baseline_parameters']:.2f}x)"
            )
        lines.append(
            f"- k = 1, {scope}: the ladder has no CR net within {MATCH:.0%} of "
            f"{_point(t['baseline'])}'s {t['baseline_parameters']} parameters; {got}."
        )
    if not lines:
        return []
    over = width_overhead(rows)
    why = "; ".join(f"{arch} {min(v):.3f}-{max(v):.3f}x" for arch, v in sorted(over.items()) if v)
    return [
        "",
        "Parameter matching at k = 1 (a 2x ladder places a CR net within 5% of a baseline "
        "only where the polynomial's coefficients cost little; CR / baseline parameters at "
        f"the same width here: {why or '—'}):",
        "",
        *lines,
    ]


SMOOTHNESS_COLUMNS = (
    ("tail_ratio", "tau per sample"),
    ("test_batch_tail_ratio", "tau test batch"),
    ("batch_tail_ratio", "tau train batch"),
    ("step_tail_ratio", "tau step (W, b)"),
    ("peak_volatility", "peak per sample"),
    ("step_peak_volatility", "peak step (W, b)"),
)


def smoothness_means(rows: list[dict]) -> dict[str, dict[str, float | None]]:
    """Per family, each smoothness reading's mean over its finished ladder runs (``None``
    where no run has it, as in records from before the reading existed)."""
    out = {}
    for fam in FAMILIES:
        rs = [r for r in rows if r["family"] == fam.name]
        if not rs:
            continue
        out[fam.name] = {}
        for key, _ in SMOOTHNESS_COLUMNS:
            vals = [r[key] for r in rs if r.get(key) is not None]
            out[fam.name][key] = float(np.mean(vals)) if vals else None
    return out


def _smoothness_table(rows: list[dict]) -> list[str]:
    means = smoothness_means(rows)
    lines = [
        "",
        "Gradient smoothness, means over every ladder run of the family. tau = p99/mean, "
        "peak = max/median, of: the trained net's per-test-sample input-gradient norms (per "
        "sample); those norms averaged over mini-batches of the training batch size (test "
        "batch); the mini-batch mean input-gradient norm over training steps (train batch); "
        "the task loss's gradient norm over the shared weights W, b, without DREG, over "
        "training steps (step):",
        "",
        "| family | " + " | ".join(name for _, name in SMOOTHNESS_COLUMNS) + " |",
        "|---|" + "---|" * len(SMOOTHNESS_COLUMNS),
    ]
    for family, m in means.items():
        lines.append(
            f"| {family} | " + " | ".join(_f(m[key], ".3f") for key, _ in SMOOTHNESS_COLUMNS) + " |"
        )
    lines += _paper_reading(means)
    return lines


def _paper_reading(means: dict[str, dict[str, float | None]]) -> list[str]:
    """Which reading puts the baselines at the papers' tau, said as measured here."""
    key = "test_batch_tail_ratio"
    base = {f: m[key] for f, m in means.items() if f in BASELINES and m[key] is not None}
    cr = means.get(CR_FAMILY, {}).get(key)
    if not base:
        return []
    lo, hi = PAPER["tail_ratio_standard"]
    inside = [f for f, v in base.items() if lo - 0.005 <= v <= hi + 0.005]
    measured = ", ".join(f"{f} {v:.3f}" for f, v in base.items())
    where = (
        f"inside the papers' {lo:.2f}-{hi:.2f} for {', '.join(inside)}"
        if inside
        else f"outside the papers' {lo:.2f}-{hi:.2f}"
    )
    per_sample = [means[f]["tail_ratio"] for f in base if means[f]["tail_ratio"] is not None]
    return [
        "",
        f"Which reading matches the papers' baseline tau: under the test-batch reading the "
        f"baselines measure {measured} here ({where}); under the per-sample reading "
        + (f"{min(per_sample):.3f}-{max(per_sample):.3f}" if per_sample else "—")
        + f". CR under the test-batch reading: {_f(cr, '.3f')} (the papers report "
        f"{PAPER['tail_ratio_cr'][0]:.2f}-{PAPER['tail_ratio_cr'][1]:.2f}). This is a "
        "measurement of which definition reproduces the published baseline figures, not a "
        "claim that it is the papers' definition.",
    ]


def _latency_table(
    pair: dict | None, parameter_ratio: float | None, metric: Metric = ACCURACY
) -> list[str]:
    if not pair:
        return []
    lines = [
        "",
        f"Latency at equal {metric.name}: `{pair['baseline']}` vs `{pair['cr']}`, fp32, timed "
        f"interleaved on {pair['device'].get('cpu', 'this CPU')}; ratio = CR / baseline per "
        "round (median, p10-p90):",
        "",
        "| runtime | batch | baseline p50 µs | CR p50 µs | CR / baseline | p10-p90 |",
        "|---|---|---|---|---|---|",
    ]
    for r in pair["rows"]:
        lines.append(
            f"| {r['runtime']} | {r['batch']} | {r['baseline_p50_us']:.1f} | {r['cr_p50_us']:.1f} "
            f"| {r['ratio']:.2f} | {r['p10']:.2f}-{r['p90']:.2f} |"
        )
    verdicts = latency_target(parameter_ratio, pair["rows"])
    lines += [
        "",
        f"Target: wherever the parameter ratio is at least {LATENCY_MIN_RATIO:g}x, CR / baseline "
        f"<= 1/3 at batch {LATENCY_BATCH} (held: the whole p10-p90 spread at or under "
        f"{LATENCY_TARGET:.2f}). Parameter ratio {_f(parameter_ratio, '.2f')}x: "
        + "; ".join(f"{v['runtime']} {v['ratio']:.2f} ({v['held']})" for v in verdicts)
        + ".",
    ]
    return lines


def convergence(runs: list[dict]) -> dict:
    """How many finished runs had their best validation epoch in the last ``LATE_SHARE`` of
    their epoch budget (``late_best``): they may still have been improving when it ended
    them. Per phase and overall; ``flagged`` when over ``LATE_FLAG`` of them."""
    done = [r for r in runs if not r.get("failed") and "late_best" in r]
    phases = {}
    for phase in sorted({r["phase"] for r in done}):
        rs = [r for r in done if r["phase"] == phase]
        phases[phase] = {"runs": len(rs), "late_best": sum(bool(r["late_best"]) for r in rs)}
    late = [r for r in done if r["late_best"]]
    share = len(late) / len(done) if done else None
    return {
        "runs": len(done),
        "late_best": len(late),
        "share": share,
        "flag_above": LATE_FLAG,
        "flagged": share is not None and share > LATE_FLAG,
        "by_phase": phases,
        "late_keys": [r["key"] for r in late if "key" in r],
    }


def convergence_lines(c: dict | None) -> list[str]:
    if not c or not c["runs"]:
        return []
    flag = (
        f" **FLAG: more than {c['flag_above']:.0%} of runs may have stopped while still "
        "improving; a longer epoch budget would change their figures.**"
        if c["flagged"]
        else f" (at most {c['flag_above']:.0%}: no flag)"
    )
    per = ", ".join(f"{p} {v['late_best']} of {v['runs']}" for p, v in c["by_phase"].items())
    return [
        "",
        f"Convergence: {c['late_best']} of {c['runs']} finished runs "
        f"({c['share']:.1%}) had their best validation epoch in the last "
        f"{LATE_SHARE:.0%} of their epoch budget ({per}).{flag}",
    ]


def tuning_edge_lines(edges: list[dict] | None) -> list[str]:
    """Where a grid's edge won and the grid grew, and where a chosen setting still sits on an
    edge with no step left (the optimum may lie outside what was tried)."""
    if edges is None:
        return []
    grew = [e for e in edges if e["added_lrs"] or e["added_second"]]
    bound = [e for e in edges if e["bound"]]
    if not grew and not bound:
        return ["", "Tuning edges: no chosen setting sat on an edge of its grid."]

    def values(xs: list[float]) -> str:
        return ", ".join(f"{x:.3g}" for x in xs)

    lines = ["", "Tuning edges (a grid whose edge won grew one step per round, up to the limit):"]
    lines.append("")
    lines += ["| family | arch | learning rates added | second axis added | still binding |"]
    lines += ["|---|---|---|---|---|"]
    for e in edges:
        if not (e["added_lrs"] or e["added_second"] or e["bound"]):
            continue
        second = f"{e['axis']} {values(e['added_second'])}" if e["added_second"] else "—"
        lines.append(
            f"| {e['family']} | {e['arch']} | {values(e['added_lrs']) or '—'} | {second} | "
            f"{', '.join(e['bound']) or 'no'} |"
        )
    if bound:
        lines += [
            "",
            "Still binding at the limit: "
            + "; ".join(f"{e['family']} {e['arch']} ({', '.join(e['bound'])})" for e in bound)
            + ". Their optimum may lie outside the grid.",
        ]
    return lines


def _cpu_share(ex: dict) -> str:
    """How much of the local workers' cores the fight had: a wall time on a shared machine
    is read with it. Empty for Ray, or a report from before the field."""
    if ex["ray"] or "cpu_seconds" not in ex:
        return ""
    share = ex["cpu_seconds"] / (ex["wall_seconds"] * ex["workers"])
    load = ", ".join(f"{x:.1f}" for x in ex["load_average"])
    return (
        f" ({ex['cpu_seconds'] / 60:.1f} CPU-min, {share:.0%} of those cores; "
        f"load average {load} at the end)"
    )


def markdown(report: dict) -> str:
    v, ex = report["verdict"], report["execution"]
    metric = _metric(report)
    retries = v.get("retries", {})
    lines = [
        f"# Fair Fight on {report['dataset']} ({report['budget']} budget)",
        "",
        f"{ex['tasks']} runs ({ex['ran']} trained now, {ex['reused']} reused), "
        f"wall time {ex['wall_seconds'] / 60:.1f} min with "
        + (f"Ray at {ex['ray']}" if ex["ray"] else f"{ex['workers']} local worker(s)")
        + _cpu_share(ex)
        + (
            "; runs of one shape (family, arch, width) trained together as one stack"
            if ex.get("stacked")
            else ""
        )
        + f". Runs whose training failed (left out): {len(v['failed_runs'])}"
        + (
            f"; diverged runs {retries['diverged']}, retried with the next seed "
            f"{retries['retried']}, of which finished {retries['recovered']}"
            if retries
            else ""
        )
        + ".",
    ]
    if "code_version" in ex:
        lines[-1] += (
            f" Training code version {ex['code_version']}; records of other code found: "
            f"{ex['stale_records']} ({ex['stale_reused']} reused by --reuse-stale, the rest "
            "retrained)."
        )
    if v.get("insufficient_points"):
        lines[-1] += (
            f" Insufficient points (fewer than {v['min_seeds']} finished seeds; left out of "
            "every choice): " + ", ".join(_point(p) for p in v["insufficient_points"]) + "."
        )
    lines += convergence_lines(report.get("convergence"))
    lines += [
        "",
        "Tuned on the validation split (same number of trials per family; a DREG family "
        "tunes lambda, the others weight decay):",
        "",
        "| family | arch | lr | DREG lambda | weight decay |",
        "|---|---|---|---|---|",
    ]
    for t in report["tuning"]:
        wd = t.get("weight_decay")  # reports from before weight decay was tuned lack it
        lines.append(
            f"| {t['family']} | {t['arch']} | {t['lr']:.3g} | {t['dreg']:.3g} | {_f(wd, '.3g')} |"
        )
    lines += tuning_edge_lines(ex.get("tuning_edges"))
    lines += [
        "",
        f"Validation {metric.name}, mean ± 95% CI half-width (parameters); every choice "
        "below is made on these:",
        "",
    ]
    lines += ladder_matrix(report["rows"], metric)
    lines += _equal_accuracy_lines(v, metric)
    lines += [
        "",
        (
            "CR at least as accurate as B"
            if metric.higher_is_better
            else f"CR's {metric.name} at most B's"
        )
        + f" (margin {metric.slack_text()}) with k x fewer parameters (k = 1: within "
        f"{MATCH:.0%}); both points chosen on validation {metric.name}, compared on test; "
        "Welch one-sided, Holm within each scope:",
        "",
        "| scope | baseline | k | CR | difference | t | df | p | p (Holm) | held |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for t in v["fewer_parameters_tests"]:
        lines.append(
            f"| {SCOPE_NAMES[t.get('scope', 'all')]} | "
            f"{_point(t['baseline'])} ({t['baseline_parameters']}) | {t['k']:g} | "
            f"{_point(t['cr'])} ({t['cr_parameters'] or '—'}) | {_f(t['difference'], '+.4f')} | "
            f"{_f(t['t'], '.2f')} | {_f(t['df'], '.1f')} | {t['p']:.3g} | {t['p_holm']:.3g} | "
            f"{'yes' if t['held'] else 'no'} |"
        )
    lines += match_lines(v["fewer_parameters_tests"], report["rows"])
    lines += _smoothness_table(
        [r for r in report["runs"] if r["phase"] == "ladder" and not r.get("failed")]
    )
    lines += _probe_tables(report)
    lines += _robustness_table(report)
    lines += _latency_table(report.get("latency"), v["parameter_ratio"], metric)
    lines += anchor(report)
    lines += ["", "| claim | paper | measured | held |", "|---|---|---|---|"]
    for c in v["claims"]:
        lines.append(f"| {c['claim']} | {c['paper']} | {c['measured']} | {c['held']} |")
    lines += ["", DEFINITIONS, "", f"Plot: `{metric.key}_vs_parameters.png`.", ""]
    return "\n".join(lines)


def anchor(report: dict) -> list[str]:
    """On MNIST-1D, our best ReLU MLP and CNN beside the benchmark paper's figures."""
    if report["dataset"] != "mnist1d" or _metric(report) is not ACCURACY:
        return []
    from cr_edge.data.mnist1d_set import PAPER_ACCURACY

    relu = [r for r in report["rows"] if r["family"] == "relu" and not r.get("insufficient")]

    def best(rows: list[dict]) -> float | None:  # chosen on validation, its test reported
        return max(rows, key=lambda r: r["val_accuracy"])["accuracy"] if rows else None

    mlp = best([r for r in relu if r["arch"] != "conv"])
    cnn = best([r for r in relu if r["arch"] == "conv"])
    paper = ", ".join(f"{name} {acc:.0f}%" for name, acc in PAPER_ACCURACY.items())
    return [
        "",
        f"Sanity anchor (Greydanus & Kobak): {paper}; ours (test accuracy of the ReLU ladder "
        f"point best on validation, this budget's epochs): MLP {_f(mlp and mlp * 100, '.1f')}%, "
        f"CNN {_f(cnn and cnn * 100, '.1f')}%.",
    ]


def plot(rows: list[dict], out: Path, metric: Metric = ACCURACY) -> Path | None:
    """The validation metric (what chooses) vs parameters per (family, arch), 95% CI bars."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    k = f"val_{metric.key}"
    rows = [r for r in rows if not r.get("insufficient") and k in r]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for (family, arch), pts in sorted(_groups(rows).items()):
        pts.sort(key=lambda r: r["parameters"])
        ax.errorbar(
            [r["parameters"] for r in pts],
            [r[k] for r in pts],
            yerr=[
                [r[k] - r[f"{k}_ci"][0] for r in pts],
                [r[f"{k}_ci"][1] - r[k] for r in pts],
            ],
            marker=ARCH_MARKERS.get(arch, "o"),
            markersize=4,
            label=f"{family} {arch}",
            color=FAMILY_COLOURS.get(family),
        )
    ax.set_xscale("log")
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xlabel("parameters")
    ax.set_ylabel(f"validation {metric.name} (mean, 95% CI)")
    ax.legend(fontsize=6, ncol=3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    path = out / f"{metric.key}_vs_parameters.png"
    atomic.write_bytes(path, buf.getvalue())
    return path


def _groups(rows: list[dict]) -> dict[tuple[str, str], list[dict]]:
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for r in rows:
        groups[(r["family"], r["arch"])].append(r)
    return groups


def write_report(
    dataset: str,
    budget: str,
    runs: list[dict],
    chosen: dict[tuple[str, str], Setting],
    verdict: dict,
    latency: dict | None,
    execution: dict,
    out: Path,
    task: str = "classify",
) -> dict:
    """``report.json``, ``report.md`` and the plot; returns the report."""
    report = {
        "dataset": dataset,
        "budget": budget,
        "task": task,
        "execution": execution,
        "tuning": [
            {"family": f, "arch": a, **setting._asdict()} for (f, a), setting in chosen.items()
        ],
        "runs": runs,
        "convergence": convergence(runs),
        "rows": aggregate([r for r in runs if r["phase"] == "ladder"], METRICS[task]),
        "verdict": verdict,
        "latency": latency,
    }
    atomic.write_json(out / "report.json", report)
    atomic.write_text(out / "report.md", markdown(report))
    plot(report["rows"], out, METRICS[task])
    return report
