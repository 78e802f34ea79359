"""The ordinal head, measured: CR against ReLU and GELU on anes96.

``anes96`` (statsmodels' 1996 election study, 7-point party identification): the same
CORAL head and width (recipe ``anes96-cr``) with the activation swapped (poly = CR, relu,
gelu), seed for seed, interleaved in this one process; test accuracy, MAE (ranks) and
quadratic-weighted kappa, mean ± standard deviation over seeds. Prints the CPU.
    python -m bench.ordinal [--seeds 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

from bench.pages import add_page_option, machine, recorded
from cr_edge.recipe import load_recipe
from cr_edge.train.loop import train


def _row(name: str, runs: list[dict], keys: tuple[str, ...]) -> str:
    cells = []
    for k in keys:
        vals = [r[f"test_{k}"] for r in runs]
        spread = statistics.stdev(vals) if len(vals) > 1 else 0.0
        cells.append(f"{statistics.mean(vals):.3f} ± {spread:.3f}")
    return f"| {name} | " + " | ".join(cells) + " |"


def anes96(seeds: int, root: Path) -> list[str]:
    lines = ["| anes96 (ordinal head) | accuracy | MAE (ranks) | QWK |", "|---|---|---|---|"]
    base = load_recipe("anes96-cr")
    runs: dict[str, list[dict]] = {"poly": [], "relu": [], "gelu": []}
    for seed in range(seeds):
        for act in runs:  # interleaved: every activation sees the same seeds in turn
            r = base.replace(activation=act, seed=seed)
            runs[act].append(train(r, root / f"anes-{act}-{seed}").metrics)
    names = {"poly": "CR (poly)", "relu": "ReLU", "gelu": "GELU"}
    lines += [_row(names[a], runs[a], ("accuracy", "mae", "qwk")) for a in runs]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    add_page_option(parser, "ordinal")
    args = parser.parse_args()
    print(machine())
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        print("\n".join(anes96(args.seeds, root)))


if __name__ == "__main__":
    with recorded("ordinal", "--page" in sys.argv[1:], fenced=False):
        main()
