"""The depressed form against the monomial one: accuracy, DREG and the exported chain.

Every CR recipe of the zoo whose data ships, plus the Fair Fight's MNIST-1D conv net (16
channels, 15 epochs), trained in both forms seed for seed, interleaved in this one process.
Per recipe: the test metric (accuracy; R^2 for regression; QWK for ordinal), the DREG term
``sum_layers mean ||J||_F^2`` on the test split, the input-gradient tail ratio p99/mean, as
mean ± standard deviation over seeds and as the paired difference (depressed - monomial)
with its p10-p90 over seeds; and the Horner Mul/Add nodes per layer of the Max/Min-guarded
export and of the Clip-guarded one, the default (an export that fails its own parity check
is counted there).
Prints the CPU.

    python -m bench.poly_form [--seeds 5] [--no-mnist1d]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np

from bench.pages import add_page_option, recorded
from cr_edge.data import BUILTINS
from cr_edge.export.exporter import ExportOptions, export
from cr_edge.export.self_check import SelfCheckFailed
from cr_edge.profile.device import describe_device
from cr_edge.recipe import Recipe, load_recipe, zoo_names
from cr_edge.task_metrics import SELECTION_METRIC
from cr_edge.train.loop import train

FORMS = ("monomial", "depressed")
KEYS = ("metric", "dreg_term", "tail_ratio")


def recipes(mnist1d: bool) -> dict[str, Recipe]:
    zoo = {n: load_recipe(n) for n in zoo_names()}
    chosen = {n: r for n, r in zoo.items() if r.activation == "poly" and r.data in BUILTINS}
    if mnist1d:
        chosen["mnist1d-conv16"] = Recipe(
            name="mnist1d-conv16",
            data="mnist1d",
            arch="conv",
            hidden=(16, 16),
            epochs=15,
            patience=5,
            lr=8e-3,
        )
    return chosen


def run(recipe: Recipe, root: Path) -> dict:
    result = train(recipe, root / "checkpoint")
    m = result.metrics
    row = {
        "metric": m[f"test_{SELECTION_METRIC[recipe.task]}"],
        "dreg_term": m["dreg_term"],
        "tail_ratio": m["tail_ratio"],
    }
    row["check_failed"] = 0
    for name, options in (
        ("nodes", ExportOptions(clip_guard=False)),
        ("clip", ExportOptions(clip_guard=True)),
    ):
        try:
            exported = export(result.checkpoint, root / name, options)
        except SelfCheckFailed as failed:  # counted and shown: the nodes are still the export's
            exported = failed.result
            row["check_failed"] += 1
        row[name] = exported.horner_nodes
    return row


def _mean_sd(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.4g} ± {sd:.2g}"


def _paired(a: list[float], b: list[float]) -> str:
    d = np.array(b) - np.array(a)
    lo, hi = np.percentile(d, [10, 90])
    return f"{np.median(d):+.3g} ({lo:+.3g}..{hi:+.3g})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--no-mnist1d", action="store_true")
    add_page_option(parser, "poly_form")
    args = parser.parse_args()
    print(describe_device())
    print(f"seeds 0..{args.seeds - 1}; paired difference = depressed - monomial, median (p10..p90)")
    print()
    print(
        "| recipe | form | metric | DREG term | tail p99/mean | nodes/layer (Max/Min) | nodes/layer (Clip) |"
    )
    print("|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for name, base in recipes(not args.no_mnist1d).items():
            runs: dict[str, list[dict]] = {f: [] for f in FORMS}
            for seed in range(args.seeds):
                for form in FORMS:  # interleaved: both forms see the same seeds in turn
                    recipe = base.replace(poly_form=form, seed=seed)
                    runs[form].append(run(recipe, Path(tmp) / f"{name}-{form}-{seed}"))
            for form in FORMS:
                rs = runs[form]
                cells = [_mean_sd([r[k] for r in rs]) for k in KEYS]
                nodes = sorted({str(r["nodes"]) for r in rs})
                clip = sorted({str(r["clip"]) for r in rs})
                failed = sum(r["check_failed"] for r in rs)
                if failed:
                    clip.append(f"(export self-check failed {failed} of {2 * len(rs)})")
                print(
                    f"| {name} | {form} | "
                    + " | ".join(cells)
                    + f" | {' '.join(nodes)} | {' '.join(clip)} |"
                )
            diffs = [
                _paired([r[k] for r in runs["monomial"]], [r[k] for r in runs["depressed"]])
                for k in KEYS
            ]
            print(f"| {name} | difference | " + " | ".join(diffs) + " | | |")


if __name__ == "__main__":
    with recorded("poly_form", "--page" in sys.argv[1:], fenced=False):
        main()
