"""Which of ``cr-edge train``'s defaults capped CR conv nets: test accuracy at widths 8, 16
and 32 on MNIST-1D under the old defaults, the new ones, and one change at a time, beside
GELU under the same defaults.

Every run is ``cr-edge train --data mnist1d --arch conv`` with no option but the width:
the recipe's defaults (epochs, patience, learning rate, DREG's lambda, gradient clipping,
range penalty, polynomial form). What differs is the two defaults this round changed:

* ``dreg_positions``: a conv layer's DREG term summed over its output positions (old) or
  averaged over them (new);
* ``lr_schedule``: a constant learning rate (old) or cosine decay over the budget (new).

The seeds of one setting and width are trained as one stack
(``cr_edge.fairfight.stacked.train_stacked``), which reproduces ``train``'s run to 1e-4
(``tests/test_fairfight_stacked.py``) without its collapse watch; on one CPU thread.
Accuracy that grows with width as GELU's does means no default binds.

Run from the repository root: ``python -m bench.conv_defaults [--seeds 3] [--page]``;
``--page`` writes the table into ``docs/benchmarks/conv_defaults.md``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

from bench.pages import add_page_option, load_average, recorded
from cr_edge.fairfight.stacked import train_stacked
from cr_edge.recipe import Recipe

WIDTHS = (8, 16, 32)
# name -> the recipe fields that differ from today's defaults
SETTINGS = {
    "CR, old defaults (sum, constant)": {"dreg_positions": "sum", "lr_schedule": "constant"},
    "CR, per-position DREG only": {"lr_schedule": "constant"},
    "CR, new defaults (mean, cosine)": {},
    "GELU, new defaults": {"activation": "gelu"},
}


def accuracies(fields: dict, width: int, seeds: int) -> tuple[list[float], list[int]]:
    """Test accuracy and best epoch of each seed's run."""
    base = Recipe(data="mnist1d", arch="conv", hidden=(width, width), **fields)
    runs = train_stacked([base.replace(seed=s) for s in range(seeds)])
    return [r.test_accuracy for r in runs], [r.best_epoch for r in runs]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=3)
    add_page_option(p, "conv_defaults")
    args = p.parse_args()
    torch.set_num_threads(1)
    defaults = Recipe(data="mnist1d", arch="conv")
    print(
        f"mnist1d Conv1d nets, two stages of the given width; {args.seeds} seeds; test "
        f"accuracy mean ± sd (best epochs). Defaults: {defaults.epochs} epochs, patience "
        f"{defaults.patience}, lr {defaults.lr:g}, lambda {defaults.dreg_lambda:.2g}, clip "
        f"{defaults.clip_grad:g}, range penalty {defaults.range_penalty:g}, form "
        f"{defaults.poly_form}. {load_average('at start')}.\n"
    )
    print("| setting | " + " | ".join(f"w{w}" for w in WIDTHS) + " |")
    print("|---|" + "---|" * len(WIDTHS))
    start = time.perf_counter()
    for name, fields in SETTINGS.items():
        cells = []
        for w in WIDTHS:
            acc, best = accuracies(fields, w, args.seeds)
            spread = statistics.stdev(acc) if len(acc) > 1 else 0.0
            cells.append(f"{statistics.mean(acc):.3f} ± {spread:.3f} ({min(best)}–{max(best)})")
        print(f"| {name} | " + " | ".join(cells) + " |")
    print(
        f"\n{len(SETTINGS) * len(WIDTHS) * args.seeds} runs in "
        f"{(time.perf_counter() - start) / 60:.1f} min; {load_average('at end')}."
    )


if __name__ == "__main__":
    with recorded("conv_defaults", "--page" in sys.argv[1:], fenced=False):
        main()
