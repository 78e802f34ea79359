"""ExecuTorch ``.pte`` against onnxruntime's CPU EP at batch 1, interleaved, on one CR net.

digits-cr (64-32-10, degree 3) is trained, then exported once to ONNX and to ``.pte``
twice: with the default dynamic batch (1..1024) and with ``--fixed-batch 1`` (static, every
node inside the XNNPACK delegate). Every side is timed in one loop (``cr_edge.profile.timing``,
alternating order), with one thread and with the runtime's default pool, three ways:

* ``bound``: as ``cr-edge profile`` times them (``workload.fast_call``): onnxruntime through
  IOBinding, ExecuTorch with its inputs bound once; both leave the outputs in buffers
  that every call reuses.
* ``run``: a user's call, ``Session.run``: numpy in, fresh numpy arrays out, on both.
* ``floor``: the fixed cost of one call, a program with the same input and output and no
  arithmetic (onnxruntime: ``profile.limit.floor_artifact``; ExecuTorch: a batch-1
  program that returns a constant), timed as ``bound``.

Each ``.pte`` row's ratio is against onnxruntime's row of the same kind: the median of
the per-round ratios, with their p10-p90.

Run from the repository root: ``python -m bench.executorch_batch1 [--epochs N] [--iters N]``.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from bench.pages import add_page_option, load_average, machine, recorded
from cr_edge.export.exporter import ExportOptions, export
from cr_edge.export.pte import export_pte
from cr_edge.profile.limit import floor_artifact
from cr_edge.profile.timing import latency_stats, measure, ratio_stats
from cr_edge.profile.workload import fast_call, preload
from cr_edge.recipe import load_recipe
from cr_edge.runtimes.registry import get_runtime
from cr_edge.runtimes.safe_load import check_artifact
from cr_edge.train.loop import train

X = {"x": np.random.default_rng(0).standard_normal((1, 1, 8, 8)).astype(np.float32)}
OUTPUTS = 10  # digits: ten logits


class NoArithmetic(torch.nn.Module):
    """The ``.pte`` floor: takes the model's input, returns a constant of its output shape."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("y", torch.zeros(1, OUTPUTS))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.y


def build(root: Path, epochs: int) -> dict[str, Path]:
    ckpt = train(load_recipe("digits-cr").replace(epochs=epochs), root / "ck").checkpoint
    dynamic = export(
        ckpt, root / "dyn", ExportOptions(companion=False, formats=("onnx", "executorch"))
    )
    fixed = export(
        ckpt,
        root / "b1",
        ExportOptions(fixed_batch=1, companion=False, formats=("onnx", "executorch")),
    )
    floor = export_pte(NoArithmetic(), torch.from_numpy(X["x"]), root / "floor.pte", batch=1)
    return {
        "ort": dynamic.files["onnx"],
        "pte-dyn": dynamic.files["pte"],
        "pte-b1": fixed.files["pte"],
        "pte-floor": floor.path,
    }


def runners(root: Path, paths: dict[str, Path], threads: int | None) -> tuple[list, list]:
    """``(kind, side, base, (fn, arg))`` per timed side, and the sessions (kept alive)."""
    ort, et = get_runtime("cpu"), get_runtime("executorch-xnnpack")
    if threads is not None:
        ort = dataclasses.replace(ort, intra_op_threads=threads)
        et = dataclasses.replace(et, threads=threads)
    preload(et)
    load = {
        side: (ort if side == "ort" else et).load(check_artifact(p)) for side, p in paths.items()
    }
    twin = floor_artifact(load["ort"], X, root / f"floor{threads or 0}.onnx")
    load["ort-floor"] = ort.load(check_artifact(twin.path))
    rows = [("bound", side, 0, fast_call(load[side], X)) for side in ("ort", "pte-dyn", "pte-b1")]
    rows += [("run", "ort", 3, (load["ort"].run, X)), ("run", "pte-b1", 3, (load["pte-b1"].run, X))]
    rows += [
        ("floor", "ort", 5, fast_call(load["ort-floor"], X)),
        ("floor", "pte", 5, fast_call(load["pte-floor"], X)),
    ]
    return rows, list(load.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--iters", type=int, default=20000, help="timed calls per side")
    add_page_option(parser, "executorch_batch1")
    args = parser.parse_args()
    print(machine())
    print(load_average("at start"))
    with tempfile.TemporaryDirectory(prefix="cr-edge-pte-") as tmp:
        paths = build(Path(tmp), args.epochs)
        print(
            f"{'threads':>8s} {'call':>6s} {'side':>8s} {'p50 us':>8s} {'/ ORT':>6s} {'p10-p90':>11s}"
        )
        for threads in (1, None):
            rows, _sessions = runners(Path(tmp), paths, threads)
            fns = [fn for *_, fn in rows]
            for fn, arg in fns:  # warm-up
                for _ in range(200):
                    fn(arg)
            timings = measure(fns, args.iters, None, 1.0)
            for k, (kind, side, base, _) in enumerate(rows):
                p50 = latency_stats(timings.samples_ns[k], 1)["p50_ms"] * 1e3
                r = ratio_stats(timings.round_medians(base), timings.round_medians(k))
                label = str(threads or "default")
                print(
                    f"{label:>8s} {kind:>6s} {side:>8s} {p50:8.2f} {r['ratio']:6.2f} "
                    f"{r['p10']:5.2f}-{r['p90']:<5.2f}"
                )
    print(load_average("at end"))


if __name__ == "__main__":
    with recorded("executorch_batch1", "--page" in sys.argv[1:]):
        main()
