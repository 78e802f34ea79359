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
from cr_edge.fairfight.stats import mean_ci
from cr_edge.fairfight.verdict import (
    LATENCY_BATCH,
    LATENCY_MIN_RATIO,
    LATENCY_TARGET,
    MATCH,
    MIN_SEEDS,
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
DEFINITIONS = (
    "Definitions. *tau* = p99 / mean and *peak volatility* = max of a set of gradient norms. "
    "Per run they are computed twice: over the test samples' input-gradient norms "
    "||d logit_pred / dx|| of the trained net (`tail_ratio`, `peak_volatility`), and over "
    "the training steps' parameter-gradient norms ||d loss / d theta|| (`step_*`). "
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
    probe = report["verdict"]["probe"]
    metric = _metric(report)
    test = f"test_{metric.key}"
    runs = [
        r
        for r in report["runs"]
        if r["phase"] in ("probe", "ladder")
        and not r.get("failed")
        and r["arch"] == probe["arch"]
        and r["width"] == probe["width"]
    ]
    fractions = sorted({r["fraction"] for r in runs})
    lines = [
        "",
        f"Sample efficiency ({probe['arch']} w{probe['width']}, test {metric.name} mean ± CI "
        "half-width; tau of input gradients):",
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
                f"{ci.estimate:.3f}±{(ci.high - ci.low) / 2:.3f} (τ {_f(np.mean(tau) if tau else None, '.2f')})"
            )
        if any(cells):  # a family outside the budget has no probes
            lines.append(f"| {fam.name} | " + " | ".join(cells) + " |")
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


def _smoothness_table(rows: list[dict]) -> list[str]:
    lines = [
        "",
        "Gradient smoothness (means over every ladder run of the family):",
        "",
        "| family | tau (input) | peak (input) | tau (steps) | peak (steps) |",
        "|---|---|---|---|---|",
    ]
    for fam in FAMILIES:
        rs = [r for r in rows if r["family"] == fam.name]
        if not rs:
            continue

        def m(key: str, rs: list[dict] = rs) -> float | None:
            vals = [r[key] for r in rs if r[key] is not None]
            return float(np.mean(vals)) if vals else None

        lines.append(
            f"| {fam.name} | {_f(m('tail_ratio'), '.3f')} | {_f(m('peak_volatility'), '.3f')} | "
            f"{_f(m('step_tail_ratio'), '.3f')} | {_f(m('step_peak_volatility'), '.3f')} |"
        )
    return lines


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
    lines += [
        "",
        "Tuned on the validation split (same number of trials per family):",
        "",
        "| family | arch | lr | DREG lambda |",
        "|---|---|---|---|",
    ]
    for t in report["tuning"]:
        lines.append(f"| {t['family']} | {t['arch']} | {t['lr']:.3g} | {t['dreg']:.3g} |")
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
        "rows": aggregate([r for r in runs if r["phase"] == "ladder"], METRICS[task]),
        "verdict": verdict,
        "latency": latency,
    }
    atomic.write_json(out / "report.json", report)
    atomic.write_text(out / "report.md", markdown(report))
    plot(report["rows"], out, METRICS[task])
    return report
