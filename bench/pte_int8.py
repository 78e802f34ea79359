"""The int8 ExecuTorch program against the fp32 one: error, bytes and batch-1 latency.

digits-cr and digits-conv (the test suite's conv variant) are trained, exported to ONNX
and to the fp32 ``.pte``, then written as int8 programs (``export_int8_pte``, calibrated
on the oracle's inputs as the pipeline's is) with each activation scheme: ``dynamic``
(per-call activation scales, the default) and ``static`` (calibrated per-tensor scales).
Per program: the max error against the oracle in int8 output steps (the tolerance is 3),
its bytes over the fp32 program's, its XNNPACK / portable node counts, and its batch-1
latency over the fp32 program's, both called as ``cr-edge profile`` calls them (inputs
bound once, ``fast_call``), one thread, interleaved in rounds that alternate their order
(``cr_edge.profile.timing``): the median per-round ratio and its p10-p90.

Run from the repository root: ``python -m bench.pte_int8 [--epochs N] [--iters N]``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file

from bench.pages import add_page_option, load_average, machine, recorded
from cr_edge.export.exporter import ExportOptions, export, export_int8_pte
from cr_edge.profile.timing import latency_stats, measure, ratio_stats
from cr_edge.profile.workload import fast_call, preload
from cr_edge.recipe import load_recipe
from cr_edge.runtimes.registry import get_runtime
from cr_edge.runtimes.safe_load import check_artifact
from cr_edge.train.loop import train
from cr_edge.validate.oracle import load_oracle

NETS = {
    "digits-cr": {},
    "digits-conv": {"name": "digits-conv", "arch": "conv", "hidden": (4, 8)},
}
SCHEMES = ("dynamic", "static")


def build(root: Path, name: str, epochs: int) -> dict[str, Path]:
    """The fp32 program, one int8 program per scheme, the oracle and the checkpoint."""
    recipe = load_recipe("digits-cr").replace(epochs=epochs, **NETS[name])
    ckpt = train(recipe, root / name / "ck").checkpoint
    fp32 = export(ckpt, root / name / "ex", ExportOptions(formats=("onnx", "executorch")))
    x = load_oracle(fp32.files["ref"]).x
    paths = {"fp32": fp32.files["pte"], "ref": fp32.files["ref"], "ckpt": Path(ckpt)}
    for scheme in SCHEMES:
        out = root / name / scheme / "model.a8w8.pte"
        paths[scheme] = export_int8_pte(ckpt, out, x, scheme).path
    return paths


def weight_share(paths: dict[str, Path]) -> str:
    """How much of the fp32 program its weights can be: the checkpoint's float32 tensors.
    One minus that is the smallest size ratio that quantizing weights alone can reach."""
    weights = sum(a.nbytes for a in load_file(paths["ckpt"] / "model.safetensors").values())
    program = paths["fp32"].stat().st_size
    return (
        f"fp32 program {program} B; the checkpoint's tensors {weights} B ({weights / program:.0%}): "
        f"with no weight bytes at all a program would be {1 - weights / program:.2f}x"
    )


def accuracy_row(paths: dict[str, Path], scheme: str) -> str:
    et = get_runtime("executorch-xnnpack")
    oracle = load_oracle(paths["ref"])
    info = json.loads(paths[scheme].with_name(paths[scheme].name + ".json").read_text())
    step = float(info["metadata"]["cr_edge.quant.output_step"])
    y = np.concatenate(et.load(check_artifact(paths[scheme])).run_all({"x": oracle.x}))
    d = info["delegation"]
    ratio = paths[scheme].stat().st_size / paths["fp32"].stat().st_size
    return (
        f"{scheme:>8s} {np.abs(y - oracle.y).max() / step:7.2f} "
        f"{paths[scheme].stat().st_size:7d} {ratio:6.3f} "
        f"{d['delegated']:4d}/{d['portable']:<3d} {d['subgraphs']:3d}"
    )


def latency(paths: dict[str, Path], iters: int) -> list[str]:
    et = dataclasses.replace(get_runtime("executorch-xnnpack"), threads=1)
    preload(et)
    x = {"x": load_oracle(paths["ref"]).x[:1].copy()}
    sides = ["fp32", *SCHEMES]
    sessions = [et.load(check_artifact(paths[s])) for s in sides]
    fns = [fast_call(s, x) for s in sessions]
    for fn, arg in fns:  # warm-up
        for _ in range(200):
            fn(arg)
    timings = measure(fns, iters, None, 1.0)
    rows = []
    for k, side in enumerate(sides):
        p50 = latency_stats(timings.samples_ns[k], 1)["p50_ms"] * 1e3
        r = ratio_stats(timings.round_medians(0), timings.round_medians(k))
        rows.append(f"{side:>8s} {p50:8.2f} {r['ratio']:6.2f} {r['p10']:5.2f}-{r['p90']:<5.2f}")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--iters", type=int, default=20000, help="timed calls per side")
    add_page_option(parser, "pte_int8")
    args = parser.parse_args()
    print(machine())
    print(load_average("at start"))
    with tempfile.TemporaryDirectory(prefix="cr-edge-pte-int8-") as tmp:
        for name in NETS:
            paths = build(Path(tmp), name, args.epochs)
            print(f"\n{name}: {weight_share(paths)}")
            print(
                f"{'scheme':>8s} {'steps':>7s} {'bytes':>7s} {'/fp32':>6s} {'xnn/port':>8s} {'sub':>3s}"
            )
            for scheme in SCHEMES:
                print(accuracy_row(paths, scheme))
            print(
                f"{'side':>8s} {'p50 us':>8s} {'/fp32':>6s} {'p10-p90':>11s}  (batch 1, 1 thread)"
            )
            for row in latency(paths, args.iters):
                print(row)
    print(load_average("at end"))


if __name__ == "__main__":
    with recorded("pte_int8", "--page" in sys.argv[1:]):
        main()
