"""ExecuTorch ``.pte`` against onnxruntime's CPU EP at batch 1, interleaved, on one CR net.

digits-cr (64-32-10, degree 3) is trained, then exported once to ONNX and to ``.pte``
twice: with the default dynamic batch (1..1024) and with ``--fixed-batch 1`` (static, every
node inside the XNNPACK delegate). The sides are timed in one loop (``cr_edge.profile.timing``,
A B C A B C ...), onnxruntime through IOBinding and ExecuTorch through inputs converted
once, each with one thread and with the runtime's default pool; the table gives each
``.pte`` / ORT ratio per round, median and p10-p90.

Run from the repository root: ``python -m bench.executorch_batch1 [--epochs N] [--iters N]``.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import tempfile
from pathlib import Path

import numpy as np

from cr_edge.export.exporter import ExportOptions, export
from cr_edge.profile.device import describe_device
from cr_edge.profile.timing import latency_stats, measure, ratio_stats
from cr_edge.profile.workload import fast_call, preload
from cr_edge.recipe import load_recipe
from cr_edge.runtimes.registry import get_runtime
from cr_edge.runtimes.safe_load import check_artifact
from cr_edge.train import train


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
    return {
        "ort": dynamic.files["onnx"],
        "pte-dyn": dynamic.files["pte"],
        "pte-b1": fixed.files["pte"],
    }


def runners(paths: dict[str, Path], threads: int | None) -> tuple[list, list]:
    """``(fn, arg)`` per side, and the sessions (kept alive while they are timed)."""
    ort, et = get_runtime("cpu"), get_runtime("executorch-xnnpack")
    if threads is not None:
        ort = dataclasses.replace(ort, intra_op_threads=threads)
        et = dataclasses.replace(et, threads=threads)
    preload(et)
    x = {"x": np.random.default_rng(0).standard_normal((1, 1, 8, 8)).astype(np.float32)}
    sessions = [(ort if side == "ort" else et).load(check_artifact(p)) for side, p in paths.items()]
    return [fast_call(s, x) for s in sessions], sessions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--iters", type=int, default=20000, help="timed calls per side")
    args = parser.parse_args()
    device = describe_device()
    print(f"{device['cpu']}, {device['usable_cores']} usable cores, {' '.join(device['isa'])}")
    print(f"load average at start: {' '.join(f'{v:.1f}' for v in os.getloadavg())}")
    with tempfile.TemporaryDirectory(prefix="cr-edge-pte-") as tmp:
        paths = build(Path(tmp), args.epochs)
        print(f"{'threads':>8s} {'side':>8s} {'p50 us':>8s} {'/ ORT':>6s} {'p10-p90':>11s}")
        for threads in (1, None):
            fns, _sessions = runners(paths, threads)
            for fn, arg in fns:  # warm-up
                for _ in range(200):
                    fn(arg)
            timings = measure(fns, args.iters, None, 1.0)
            base = timings.round_medians(0)
            for k, side in enumerate(paths):
                p50 = latency_stats(timings.samples_ns[k], 1)["p50_ms"] * 1e3
                r = ratio_stats(base, timings.round_medians(k))
                label = str(threads or "default")
                print(
                    f"{label:>8s} {side:>8s} {p50:8.2f} {r['ratio']:6.2f} "
                    f"{r['p10']:5.2f}-{r['p90']:<5.2f}"
                )
    print(f"load average at end: {' '.join(f'{v:.1f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
