"""What ``cr-edge profile``'s own harness costs per measured inference.

The model is the smallest zoo model, digits-cr (trained for one epoch and exported,
or ``--model PATH``), on the ``cpu`` runtime at batch 1: the case where harness time
weighs most. Four sides, interleaved round by round (a b c d a b c d ...):

  a  bare:     ``for _ in range(n): fn(arg)`` with the same IOBinding call, no clock
  b  harness:  ``timing.measure`` exactly as ``profile`` calls it, no progress bar
  c  +bar:     the same with the progress display the CLI draws on stderr (a bar on a
               terminal, one line per setting in a pipe)
  d  A/B:      two sessions of the model, n runs each in 100 interleaved rounds (``profile a b``)

Overhead per inference = (wall time of the harness - the sum of the latencies it
recorded) / n: the time spent outside the timed ``run`` call, round bookkeeping and
progress updates included. It is reported as a % of the p50 recorded latency (the
headline figure; target < 5%), next to the harness's wall time per run against the
bare loop's, which also counts the clock calls inside the timed interval. The
overhead is given as the median over rounds and for the least-disturbed round (the
timeit convention): on a busy machine a preemption that lands outside the timed call
counts as harness time, so the load average is printed too.

Run from the repository root: ``python -m bench.profile_overhead [--model PATH]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import onnxruntime as ort

from bench.pages import add_page_option, recorded
from cr_edge.cli.progress import fraction_bar
from cr_edge.profile.timing import measure
from cr_edge.profile.workload import fast_call, make_feeds
from cr_edge.runtimes.registry import get_runtime
from cr_edge.runtimes.safe_load import check_artifact


def smallest_zoo_model(folder: Path) -> Path:
    """digits-cr, one epoch, exported to ``folder`` (needs the train extra)."""
    from cr_edge.export.exporter import ExportOptions, export
    from cr_edge.recipe import load_recipe
    from cr_edge.train.loop import train

    result = train(load_recipe("digits-cr").replace(epochs=1), folder / "ck", device="cpu")
    export(result.checkpoint, folder / "ex", ExportOptions(companion=False))
    return folder / "ex" / "model.onnx"


def bare(fn, arg, n: int) -> float:
    start = time.perf_counter_ns()
    for _ in range(n):
        fn(arg)
    return (time.perf_counter_ns() - start) / n


def harness(runners: list, n: int, bar: bool) -> tuple[float, float, float]:
    """(wall ns per run, p50 recorded latency ns, overhead ns per run outside the timed call)."""
    if bar:  # timed inside the bar: the CLI opens it once per command, not per measurement
        with fraction_bar() as update:
            update("bench", 0.0)
            start = time.perf_counter_ns()
            timings = measure(runners, n, None, 0.0, lambda f: update("bench", f))
            wall = time.perf_counter_ns() - start
    else:
        start = time.perf_counter_ns()
        timings = measure(runners, n, None, 0.0)
        wall = time.perf_counter_ns() - start
    samples = [t for per_model in timings.samples_ns for t in per_model]
    return wall / len(samples), statistics.median(samples), (wall - sum(samples)) / len(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="an exported .onnx (default: digits-cr)")
    parser.add_argument("--iters", type=int, default=1000, help="runs per side per round")
    parser.add_argument("--rounds", type=int, default=30)
    add_page_option(parser, "profile_overhead")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = args.model or smallest_zoo_model(Path(tmp))
        sessions = [get_runtime("cpu").load(check_artifact(path)) for _ in range(2)]
        a, b = (fast_call(s, make_feeds(s, 1, path)) for s in sessions)
        bare(*a, 5000)  # warm-up
        bare(*b, 5000)
        sides = {
            "b harness": lambda: harness([a], args.iters, bar=False),
            "c +bar": lambda: harness([a], args.iters, bar=True),
            "d A/B": lambda: harness([a, b], args.iters, bar=False),
        }
        bare_ns: list[float] = []
        seen: dict[str, list[tuple[float, float, float]]] = {side: [] for side in sides}
        for _ in range(args.rounds):
            bare_ns.append(bare(*a, args.iters))
            for side, run in sides.items():
                seen[side].append(run())
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    name = path.name if args.model else "digits-cr model.onnx"
    print(
        f"load average {load:.2f} on {os.cpu_count()} cores, onnxruntime {ort.__version__}, "
        f"{name}, cpu runtime, batch 1, {args.rounds} interleaved rounds x {args.iters} runs"
    )
    base = statistics.median(bare_ns)
    head = f"{'side':<10} {'p50':>8} {'wall/run':>9} {'outside: median':>17} {'least':>15}"
    print(f"{head} {'wall/bare':>9}")
    print(f"{'a bare':<10} {'-':>8} {base / 1e3:>7.2f}µs {'-':>17} {'-':>15} {1:>9.3f}")
    for side, results in seen.items():
        wall, lat, over = (statistics.median(col) for col in zip(*results, strict=True))
        least = min(r[2] for r in results)
        print(
            f"{side:<10} {lat / 1e3:>6.2f}µs {wall / 1e3:>7.2f}µs {over:>6.0f}ns = {over / lat:>6.2%} "
            f"{least:>5.0f}ns = {least / lat:>6.2%} {wall / base:>9.3f}"
        )
    print("target: time outside the timed run call < 5% of the p50 latency")


if __name__ == "__main__":
    with recorded("profile_overhead", "--page" in sys.argv[1:]):
        main()
