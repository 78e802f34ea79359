"""From run records to the claims: ratios at equal accuracy, smoothness per family.

Pure functions over plain records (the dicts stored in ``report.json``), so the
test suite can recompute every ratio of a report from its own JSON.
"""

from __future__ import annotations

import statistics
from collections import defaultdict

BASELINES = ("relu", "gelu")  # the standard nets, trained without DREG
CR_FAMILY = "cr"
ACCURACY_SLACK = 0.005  # T = best baseline mean accuracy - 0.5 points
PAPER = {
    "parameter_ratio": 15.5,
    "peak_volatility_change": -0.231,
    "tail_ratio_cr": (1.01, 1.02),
    "tail_ratio_standard": (1.07, 1.09),
}


def _mean(values: list[float]) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.fmean(values) if values else None


def _spread(values: list[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else 0.0


def aggregate(records: list[dict]) -> list[dict]:
    """One row per (family, width): means over seeds, with the accuracy's spread."""
    groups: dict[tuple[str, int], list[dict]] = defaultdict(list)
    for r in records:
        groups[(r["family"], r["width"])].append(r)
    rows = []
    for (family, width), runs in sorted(groups.items()):
        acc = [r["test_accuracy"] for r in runs]
        rows.append(
            {
                "family": family,
                "width": width,
                "seeds": len(runs),
                "parameters": runs[0]["parameters"],
                "accuracy": statistics.fmean(acc),
                "accuracy_std": _spread(acc),
                "int8_accuracy": _mean([r.get("int8_accuracy") for r in runs]),
                "latency_us": _mean(
                    [r.get("int8_latency_us") or r.get("fp32_latency_us") for r in runs]
                ),
                "tail_ratio": _mean([r["tail_ratio"] for r in runs]),
                "peak_volatility": _mean([r["peak_volatility"] for r in runs]),
            }
        )
    return rows


def _smallest_reaching(rows: list[dict], threshold: float) -> dict | None:
    reaching = [r for r in rows if r["accuracy"] >= threshold]
    return min(reaching, key=lambda r: (r["parameters"], -r["accuracy"])) if reaching else None


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def family_smoothness(records: list[dict]) -> dict[str, dict]:
    """Mean tail ratio and peak volatility per family, over all its runs."""
    out: dict[str, dict] = {}
    for family in sorted({r["family"] for r in records}):
        runs = [r for r in records if r["family"] == family]
        out[family] = {
            "tail_ratio": _mean([r["tail_ratio"] for r in runs]),
            "peak_volatility": _mean([r["peak_volatility"] for r in runs]),
            "runs": len(runs),
        }
    return out


def verdict(records: list[dict]) -> dict:
    """The Fair Fight's findings, each with the configurations it compares."""
    rows = aggregate(records)
    base = [r for r in rows if r["family"] in BASELINES]
    cr = [r for r in rows if r["family"] == CR_FAMILY]
    if not base or not cr:
        raise ValueError("a verdict needs runs of the cr family and of a baseline family")
    best = max(base, key=lambda r: r["accuracy"])
    threshold = best["accuracy"] - ACCURACY_SLACK
    base_t = _smallest_reaching(base, threshold)
    cr_t = _smallest_reaching(cr, threshold)
    widest_width = max(r["width"] for r in base)
    widest = max((r for r in base if r["width"] == widest_width), key=lambda r: r["accuracy"])
    smooth = family_smoothness(records)
    base_family = best["family"]
    out = {
        "threshold": threshold,
        "best_baseline": best,
        "smallest_baseline_at_threshold": base_t,
        "smallest_cr_at_threshold": cr_t,
        "widest_baseline": widest,
        "parameter_ratio": _ratio(base_t["parameters"], cr_t["parameters"]) if cr_t else None,
        "latency_ratio": _ratio(base_t["latency_us"], cr_t["latency_us"]) if cr_t else None,
        "parameter_ratio_vs_widest": (
            _ratio(widest["parameters"], cr_t["parameters"]) if cr_t else None
        ),
        "smoothness": smooth,
        "baseline_family": base_family,
    }
    out["claims"] = claims(out, smooth, base_family)
    return out


def claims(v: dict, smooth: dict[str, dict], base_family: str) -> list[dict]:
    """Each of the paper's claims beside what this run measured, and whether it held."""
    cr_s, base_s = smooth.get(CR_FAMILY, {}), smooth.get(base_family, {})
    ratio = v["parameter_ratio"]
    peak_change = None
    if cr_s.get("peak_volatility") is not None and base_s.get("peak_volatility"):
        peak_change = cr_s["peak_volatility"] / base_s["peak_volatility"] - 1.0
    tau_cr, tau_base = cr_s.get("tail_ratio"), base_s.get("tail_ratio")
    return [
        {
            "claim": "parameters at equal accuracy",
            "paper": f"{PAPER['parameter_ratio']}x fewer",
            "measured": "CR never reached the threshold" if ratio is None else f"{ratio:.2f}x",
            "held": _held(
                ratio is not None and ratio >= PAPER["parameter_ratio"],
                ratio is not None and ratio > 1.0,
            ),
        },
        {
            "claim": "peak gradient volatility",
            "paper": "-23.1% (MNIST)",
            "measured": None if peak_change is None else f"{peak_change:+.1%} vs {base_family}",
            "held": _held(
                peak_change is not None and peak_change <= PAPER["peak_volatility_change"],
                peak_change is not None and peak_change < 0,
            ),
        },
        {
            "claim": "gradient tail ratio p99/mean",
            "paper": "1.01-1.02 (CR) vs 1.07-1.09",
            "measured": None
            if tau_cr is None or tau_base is None
            else f"{tau_cr:.3f} (CR) vs {tau_base:.3f} ({base_family})",
            "held": _held(
                tau_cr is not None
                and tau_base is not None
                and tau_cr <= PAPER["tail_ratio_cr"][1]
                and tau_base >= PAPER["tail_ratio_standard"][0],
                tau_cr is not None and tau_base is not None and tau_cr < tau_base,
            ),
        },
    ]


def _held(fully: bool, direction: bool) -> str:
    """``yes`` at the paper's magnitude, ``partly`` in its direction only, else ``no``."""
    return "yes" if fully else "partly" if direction else "no"
