"""Ordinal against a plain 5-class head on the generated review corpus, on MAE (stars).

The corpus (``review_corpus``) plants an ordinal signal: a review's words
come from tone pools whose mix moves smoothly with its 1..5 stars, so neighbouring
ratings share vocabulary. Both sides are the same CR text net (hashed 1-2-grams, a
masked-mean embedding, one CR hidden layer; the same widths), one with the CORAL head
(``--task ordinal``), one with 5 softmax logits (``--task classify``), trained seed for
seed, interleaved, in this one process. Both are scored the same way, from the
checkpoint's test split: MAE of the predicted class in stars, accuracy and QWK. Prints
the CPU, mean ± standard deviation, and the per-seed MAE difference (p10..p90).
    python -m bench.text_heads [--seeds 5] [--reviews 1500,6000]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from bench.pages import add_page_option, machine, recorded
from cr_edge import heads
from cr_edge.checkpoint import load_checkpoint
from cr_edge.recipe import Recipe
from cr_edge.task_metrics import task_metrics
from cr_edge.train.loop import train
from tests.review_corpus import write_review_corpus

TASKS = {"ordinal": "ordinal (CORAL) head", "classify": "5-class softmax head"}


def _test_metrics(checkpoint: Path) -> dict[str, float]:
    """Accuracy, MAE and QWK of the predicted class, for either head alike."""
    ckpt = load_checkpoint(checkpoint)
    calib = ckpt.calib()
    with torch.no_grad():
        out = ckpt.net(torch.from_numpy(calib["x_test"]))
    pred = heads.predictions(ckpt.task, out).numpy()
    return task_metrics("ordinal", pred, calib["y_test"], ckpt.net_config.n_classes) | {
        "parameters": ckpt.net.n_parameters()
    }


def _cell(values: list[float]) -> str:
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.3f} ± {spread:.3f}"


def run(seeds: int, reviews: int, root: Path) -> list[str]:
    data = write_review_corpus(root / "reviews.csv", reviews, seed=0)
    base = Recipe(
        name="reviews",
        data=str(data),
        label="label",
        text_column="text",
        buckets=4096,
        max_len=64,
        embed_dim=16,
        hidden=(16,),
        epochs=30,
        patience=8,
        batch_size=64,
    )
    runs: dict[str, list[dict]] = {task: [] for task in TASKS}
    for seed in range(seeds):
        for task in TASKS:  # interleaved: both heads see each seed (split, init) in turn
            out = root / f"{task}-{seed}"
            train(base.replace(task=task, seed=seed), out)
            runs[task].append(_test_metrics(out))
    lines = [
        f"| review corpus ({reviews} reviews, {seeds} seeds) | parameters | MAE (stars) "
        "| accuracy | QWK |",
        "|---|---|---|---|---|",
    ]
    for task, name in TASKS.items():
        r = runs[task]
        cells = [_cell([m[k] for m in r]) for k in ("mae", "accuracy", "qwk")]
        lines.append(f"| {name} | {r[0]['parameters']:,} | " + " | ".join(cells) + " |")
    diff = np.array(
        [c["mae"] - o["mae"] for c, o in zip(runs["classify"], runs["ordinal"], strict=True)]
    )
    p10, p50, p90 = np.percentile(diff, [10, 50, 90])
    wins = int((diff > 0).sum())
    lines.append("")
    lines.append(
        f"MAE(5-class) - MAE(ordinal), per seed: median {p50:+.3f}, p10..p90 "
        f"{p10:+.3f}..{p90:+.3f}; ordinal lower in {wins}/{seeds} seeds"
    )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--reviews", default="1500,6000", help="corpus sizes, a comma list")
    add_page_option(parser, "text_heads")
    args = parser.parse_args()
    print(machine())
    for n in (int(r) for r in args.reviews.split(",")):
        with tempfile.TemporaryDirectory() as tmp:
            print("\n".join(run(args.seeds, n, Path(tmp))), end="\n\n", flush=True)


if __name__ == "__main__":
    with recorded("text_heads", "--page" in sys.argv[1:], fenced=False):
        main()
