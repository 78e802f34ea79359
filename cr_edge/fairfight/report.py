"""The Fair Fight's report: Markdown for people, JSON for machines, PNG plots.

Every figure in ``report.md`` is derived from ``report.json`` by ``verdict``,
never typed in, so the Markdown and the JSON cannot disagree.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cr_edge import atomic
from cr_edge.fairfight.verdict import aggregate, verdict

FAMILY_COLOURS = {
    "cr": "tab:red",
    "cr-nodreg": "tab:orange",
    "relu": "tab:blue",
    "relu-dreg": "tab:cyan",
    "gelu": "tab:green",
    "gelu-dreg": "tab:olive",
}


def _f(value: float | None, fmt: str = ".4f") -> str:
    return "—" if value is None else format(value, fmt)


def markdown(report: dict) -> str:
    v = report["verdict"]
    lines = [f"# Fair Fight on {report['dataset']} ({report['budget']} budget)", ""]
    lines += [
        "| family | width | params | accuracy (mean ± sd) | int8 acc | int8 latency µs "
        "| tau | peak vol. |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in aggregate(report["runs"]):
        lines.append(
            f"| {r['family']} | {r['width']} | {r['parameters']} | {r['accuracy']:.4f} ± "
            f"{r['accuracy_std']:.4f} | {_f(r['int8_accuracy'])} | {_f(r['latency_us'], '.1f')} "
            f"| {_f(r['tail_ratio'], '.3f')} | {_f(r['peak_volatility'], '.3f')} |"
        )
    base_t, cr_t = v["smallest_baseline_at_threshold"], v["smallest_cr_at_threshold"]
    lines += [
        "",
        f"Threshold T = best baseline mean accuracy - 0.5 points = {v['threshold']:.4f} "
        f"(best: {v['best_baseline']['family']} width {v['best_baseline']['width']}).",
        "",
    ]
    if cr_t is None:
        lines.append("No CR width reached T: there is no equal-accuracy comparison to make.")
    else:
        lines.append(
            f"At equal accuracy: smallest baseline {base_t['family']} w{base_t['width']} "
            f"({base_t['parameters']} params) vs smallest CR w{cr_t['width']} "
            f"({cr_t['parameters']} params): parameter ratio **{_f(v['parameter_ratio'], '.2f')}x**, "
            f"latency ratio {_f(v['latency_ratio'], '.2f')}x; against the widest baseline "
            f"({v['widest_baseline']['parameters']} params) {_f(v['parameter_ratio_vs_widest'], '.2f')}x."
        )
    # held: "yes" at the paper's magnitude, "partly" in its direction only, "no" otherwise
    lines += ["", "| claim | paper | measured | held |", "|---|---|---|---|"]
    for c in v["claims"]:
        lines.append(f"| {c['claim']} | {c['paper']} | {c['measured'] or '—'} | {c['held']} |")
    lines += [
        "",
        "Plots: `accuracy_vs_parameters.png`, `accuracy_vs_latency.png`, `gradient_norms.png`.",
        "",
    ]
    return "\n".join(lines)


def plots(report: dict, grad_norms: dict[str, np.ndarray], out: Path) -> list[Path]:
    """Accuracy vs parameters, accuracy vs int8 latency, gradient-norm distributions."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    rows = aggregate(report["runs"])
    written = []
    for key, label, name in (
        ("parameters", "parameters", "accuracy_vs_parameters.png"),
        ("latency_us", "int8 latency (µs, batch 1)", "accuracy_vs_latency.png"),
    ):
        fig, ax = plt.subplots(figsize=(6, 4))
        for family in sorted({r["family"] for r in rows}):
            fam = [r for r in rows if r["family"] == family and r[key] is not None]
            if fam:
                ax.errorbar(
                    [r[key] for r in fam],
                    [r["accuracy"] for r in fam],
                    yerr=[r["accuracy_std"] for r in fam],
                    marker="o",
                    label=family,
                    color=FAMILY_COLOURS.get(family),
                )
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())  # labels collide
        ax.set_xlabel(label)
        ax.set_ylabel("test accuracy")
        ax.legend(fontsize=8)
        fig.tight_layout()
        written.append(_save(fig, out / name))
        plt.close(fig)
    fig, ax = plt.subplots(figsize=(6, 4))
    positive = np.concatenate([n[n > 0] for n in grad_norms.values()] or [np.ones(1)])
    # log-spaced bins: one family's long tail would otherwise squash the others into a spike
    bins = np.geomspace(positive.min(), positive.max(), 50) if positive.size else 40
    for family, norms in sorted(grad_norms.items()):
        ax.hist(
            norms[norms > 0],
            bins=bins,
            histtype="step",
            density=True,
            label=family,
            color=FAMILY_COLOURS.get(family),
        )
    ax.set_xscale("log")
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xlabel("per-sample input-gradient norm ||d logit_pred / dx||")
    ax.set_ylabel("density")
    ax.legend(fontsize=8)
    fig.tight_layout()
    written.append(_save(fig, out / "gradient_norms.png"))
    plt.close(fig)
    return written


def _save(fig, path: Path) -> Path:
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    atomic.write_bytes(path, buf.getvalue())
    return path


def write_report(
    dataset: str, budget: str, runs: list[dict], grad_norms: dict[str, np.ndarray], out: Path
) -> dict:
    """``report.json``, ``report.md`` and the plots; returns the report."""
    report = {"dataset": dataset, "budget": budget, "runs": runs, "verdict": verdict(runs)}
    atomic.write_json(out / "report.json", report)
    atomic.write_text(out / "report.md", markdown(report))
    plots(report, grad_norms, out)
    return report
