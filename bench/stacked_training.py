"""Fair Fight runs per hour: one run per task (``train``), against seeds and learning-rate
trials of one shape trained together (``cr_edge.fairfight.stacked.train_stacked``).

Both sides train the same recipes (the fight's settings: cosine schedule, DREG per position,
no clipping or range penalty) on one CPU thread, as a fight worker does. Sides alternate
(single, stacked, single, stacked, ...) so that drift in the machine's speed, and the other
work on a shared machine, hits both alike; each round prints both rates side by side and
the per-net test accuracies, which must agree within seed noise. The single side includes
what a fight task pays per run (loading and splitting the data, the checkpoint written to a
temporary folder); imports and torch.func's first-call set-up are paid once, before round 1.

Run from the repository root: ``python -m bench.stacked_training [--rounds 3] [--epochs 3]
[--page]``; ``--page`` writes the table into ``docs/benchmarks/stacked_training.md``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from bench.pages import add_page_option, recorded
from cr_edge.fairfight.stacked import train_stacked
from cr_edge.recipe import Recipe
from cr_edge.train.loop import train_unlocked


def recipes(args: argparse.Namespace) -> list[Recipe]:
    """Seeds x learning rates of one shape, as a fight's tuning trains them."""
    base = Recipe(
        data=args.data,
        arch=args.arch,
        hidden=(args.width,) * (2 if args.arch == "conv" else 1),
        epochs=args.epochs,
        patience=args.epochs,  # every run trains the whole budget: equal work on both sides
        lr_schedule="cosine",
        dreg_positions="mean",
        clip_grad=0.0,
        range_penalty=0.0,
    )
    return [base.replace(seed=s, lr=lr) for s in range(args.seeds) for lr in args.lrs]


def single(rs: list[Recipe]) -> tuple[float, list[float]]:
    start = time.perf_counter()
    acc = []
    for r in rs:
        with tempfile.TemporaryDirectory() as tmp:
            acc.append(train_unlocked(r, Path(tmp) / "c", threads=1).metrics["test_accuracy"])
    return time.perf_counter() - start, acc


def stacked(rs: list[Recipe]) -> tuple[float, list[float]]:
    start = time.perf_counter()
    runs = train_stacked(rs)
    return time.perf_counter() - start, [r.test_accuracy for r in runs]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="mnist1d")
    p.add_argument("--arch", default="conv", choices=("mlp", "conv"))
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--lrs", type=float, nargs="+", default=[4e-3, 1.6e-2])
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--rounds", type=int, default=3)
    add_page_option(p, "stacked_training")
    args = p.parse_args()
    torch.set_num_threads(1)
    rs = recipes(args)
    print(f"{len(rs)} runs of {args.data} {args.arch} w{args.width}, {args.epochs} epochs each")
    warm = [r.replace(epochs=1) for r in rs[:2]]
    single(warm[:1]), stacked(warm)  # imports, data caches, torch.func set-up
    rates: dict[str, list[float]] = {"single": [], "stacked": []}
    print("round | single runs/h | stacked runs/h | speed-up | max |acc diff| | seed sd")
    for k in range(1, args.rounds + 1):
        t1, a1 = single(rs)
        t2, a2 = stacked(rs)
        rates["single"].append(len(rs) * 3600 / t1)
        rates["stacked"].append(len(rs) * 3600 / t2)
        diff = max(abs(x - y) for x, y in zip(a1, a2, strict=True))
        sd = statistics.stdev(a1) if len(a1) > 1 else 0.0
        print(
            f"{k:5d} | {rates['single'][-1]:13.0f} | {rates['stacked'][-1]:14.0f} | "
            f"{t1 / t2:7.2f}x | {diff:16.4f} | {sd:.4f}"
        )
    s, t = statistics.median(rates["single"]), statistics.median(rates["stacked"])
    print(f"median | {s:13.0f} | {t:14.0f} | {t / s:7.2f}x")


if __name__ == "__main__":
    with recorded("stacked_training", "--page" in sys.argv[1:]):
        main()
