"""The measuring loop: interleaved rounds, ``perf_counter_ns`` around the run call only.

Several models measured at one setting share the loop: each round runs every model
``chunk`` times in turn, so that a slow spell on a noisy machine (a thermal
throttle, a background job) hits all of them alike, and the per-round ratio of their
medians cancels it. The order alternates between rounds (A B, B A, ...): the side
that runs first after the other one's calls pays for cold caches and branch
predictors, and a fixed order would charge that to one side every round. One model is simply the one-model case of the same loop.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

ROUNDS = 100  # rounds when comparing: enough per-round ratios for a p10-p90 spread
SOLO_ROUNDS = 10  # one model needs rounds only to move the progress bar
REPORT_NS = 100_000_000  # progress callbacks at most every 0.1 s
Runner = tuple[Callable[[Any], Any], Any]  # fn(arg) runs the model once


@dataclass
class Timings:
    """Per model: every latency in ns, in order; ``sizes`` are the runs in each round."""

    samples_ns: list[list[int]]
    sizes: list[int]

    def round_medians(self, k: int) -> list[float]:
        """Median of each round of model ``k``, vectorised, computed only when compared.

        Every round has ``sizes[0]`` runs except perhaps a shorter last one.
        """
        arr = np.asarray(self.samples_ns[k], dtype=np.float64)
        first, last = self.sizes[0], self.sizes[-1]
        full = arr.size if last == first else arr.size - last
        medians = np.median(arr[:full].reshape(-1, first), axis=1).tolist()
        if full < arr.size:
            medians.append(float(np.median(arr[full:])))
        return medians


def measure(
    runners: list[Runner],
    iters: int,
    seconds: float | None,
    estimate_ns: float,
    on_round: Callable[[float], None] | None = None,
) -> Timings:
    """Run every runner ``iters`` times (or for ``seconds`` in all), interleaved in rounds.

    ``estimate_ns`` (one run's latency, from the warmup) sizes the rounds of a timed
    run. ``on_round`` gets the fraction done, at most every ``REPORT_NS``: a progress
    bar redrawn after every round would cost more than a 5 µs model.
    """
    rounds = ROUNDS if len(runners) > 1 else SOLO_ROUNDS
    if seconds is None:
        chunk = max(1, iters // rounds)
    else:
        chunk = max(1, int(seconds * 1e9 / rounds / (len(runners) * max(estimate_ns, 1.0))))
    samples: list[list[int]] = [[] for _ in runners]
    sizes: list[int] = []  # runs per round, the same for every runner
    clock = time.perf_counter_ns
    start = last_report = clock()
    done = 0
    while True:
        n = chunk if seconds is not None else min(chunk, iters - done)
        order = range(len(runners)) if len(sizes) % 2 == 0 else reversed(range(len(runners)))
        for k in order:
            fn, arg = runners[k]
            samples[k] += _timed(fn, arg, n)
        sizes.append(n)
        done += n
        now = clock()
        fraction = done / iters if seconds is None else (now - start) / (seconds * 1e9)
        if on_round is not None and (fraction >= 1.0 or now - last_report > REPORT_NS):
            on_round(min(fraction, 1.0))
            last_report = now
        if fraction >= 1.0:
            return Timings(samples, sizes)


def _timed(fn: Callable[[Any], Any], arg: Any, n: int) -> list[int]:
    """The innermost loop: nothing but the clock, the call and one list store."""
    clock = time.perf_counter_ns
    out = [0] * n
    for i in range(n):
        t0 = clock()
        fn(arg)
        out[i] = clock() - t0
    return out


def latency_stats(samples_ns: list[int], batch: int) -> dict[str, float]:
    """Latency in ms (min/p10/p50/p90/p99/max, mean, std), spread and throughput.

    ``spread`` is (p90 - p10) / p50, a relative width that is comparable across models;
    ``throughput`` is samples per second, batch / mean latency.
    """
    ms = np.asarray(samples_ns, dtype=np.float64) / 1e6
    p10, p50, p90, p99 = np.percentile(ms, [10, 50, 90, 99])
    mean = float(ms.mean())
    return {
        "count": int(ms.size),
        "min_ms": float(ms.min()),
        "p10_ms": float(p10),
        "p50_ms": float(p50),
        "p90_ms": float(p90),
        "p99_ms": float(p99),
        "max_ms": float(ms.max()),
        "mean_ms": mean,
        "std_ms": float(ms.std()),
        "spread": float((p90 - p10) / p50) if p50 > 0 else 0.0,
        "throughput": batch / (mean / 1e3),
    }


def ratio_stats(base: list[float], other: list[float]) -> dict[str, float]:
    """``other`` / ``base`` per round: median and the p10-p90 spread of the per-round ratios."""
    ratios = np.asarray(other) / np.maximum(np.asarray(base), 1.0)
    p10, p50, p90 = np.percentile(ratios, [10, 50, 90])
    return {"ratio": float(p50), "p10": float(p10), "p90": float(p90), "rounds": int(ratios.size)}
