"""Training throughput of ``--nproc 2`` (DDP, gloo) relative to one process, interleaved.

Each round trains the same recipe once in one process and once under
``torch.distributed.run --nproc-per-node 2``, alternating which goes first. Inside every
run the worker times ``train_unlocked`` (loading, training, evaluation, the checkpoint;
the interpreter, torch's import and the launch are not counted) on rank 0, with a fixed
epoch count (patience = epochs), so that samples per second = epochs x training samples /
seconds. Prints the CPU, each side's samples/s, and the ratio 2-process / 1-process per
round (median, p10..p90).
    python -m bench.ddp_throughput [--rounds 5] [--epochs 10] [--hidden 256,256]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.pages import add_page_option, machine, recorded
from cr_edge.data import load_source, split
from cr_edge.recipe import Recipe


def worker(recipe_json: str, out: str) -> None:
    import torch.distributed as dist

    from cr_edge.train.loop import train_unlocked
    from cr_edge.train.ranks import Rank

    rank = None
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        dist.init_process_group("gloo")
        rank = Rank(dist.get_rank(), dist.get_world_size())
    recipe = Recipe.from_json(json.loads(recipe_json))
    start = time.perf_counter()
    result = train_unlocked(recipe, Path(out), "cpu", rank=rank)
    seconds = time.perf_counter() - start
    if rank is None or rank.rank == 0:
        print(json.dumps({"seconds": seconds, "test_accuracy": result.metrics["test_accuracy"]}))
    if rank is not None:
        dist.destroy_process_group()


def _run(nproc: int, recipe: Recipe, out: Path) -> dict:
    args = ["-m", "bench.ddp_throughput", "--worker", json.dumps(recipe.to_json()), str(out)]
    if nproc > 1:
        args = ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", *args]
    done = subprocess.run([sys.executable, *args], capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--hidden", default="256,256")
    parser.add_argument("--worker", nargs=2, metavar=("RECIPE_JSON", "OUT"))
    add_page_option(parser, "ddp_throughput")
    args = parser.parse_args()
    if args.worker:
        worker(*args.worker)
        return
    print(machine())
    print(f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
    hidden = tuple(int(h) for h in args.hidden.split(","))
    recipe = Recipe(data="digits", hidden=hidden, epochs=args.epochs, patience=args.epochs)
    n_train = len(split(load_source("digits"), recipe.seed).y_train)
    rate: dict[int, list[float]] = {1: [], 2: []}
    acc: dict[int, list[float]] = {1: [], 2: []}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for nproc in (1, 2) if r % 2 == 0 else (2, 1):
                got = _run(nproc, recipe, Path(tmp) / f"{nproc}-{r}")
                rate[nproc].append(args.epochs * n_train / got["seconds"])
                acc[nproc].append(got["test_accuracy"])
    ratio = np.array(rate[2]) / np.array(rate[1])
    p10, p50, p90 = np.percentile(ratio, [10, 50, 90])
    print(f"digits, MLP {list(hidden)}, {args.epochs} epochs, batch 64 (2 x 32 under DDP)")
    for n in (1, 2):
        print(
            f"{n} process(es): {np.median(rate[n]):,.0f} samples/s (median of {args.rounds}), "
            f"test accuracy {np.mean(acc[n]):.4f}"
        )
    print(f"ratio 2 / 1: median {p50:.2f}x, p10..p90 {p10:.2f}..{p90:.2f}x")


if __name__ == "__main__":
    with recorded("ddp_throughput", "--page" in sys.argv[1:]):
        main()
