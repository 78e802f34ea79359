"""The Fair Fight's statistics: confidence intervals, Welch's t, Holm's correction, the bootstrap.

A handful of seeds per ladder point is all a sweep can afford, so every figure the
verdict reads comes with its uncertainty, and a claim holds only when the interval
says so, never on a point estimate. Plain functions over lists of floats; the tests
check them against values computed by hand.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats as sps

LEVEL = 0.95  # every interval in the report is a 95% one


@dataclass(frozen=True)
class Interval:
    """A mean (or any estimate) with the bounds of its confidence interval."""

    estimate: float
    low: float
    high: float

    def to_json(self) -> dict:
        """Non-finite bounds (an undefined resample) become ``null``: JSON has no infinity."""
        return {k: undefined_as_none(getattr(self, k)) for k in ("estimate", "low", "high")}


@dataclass(frozen=True)
class Welch:
    """One-sided Welch test of ``mean(a) - mean(b) > -margin``."""

    difference: float  # mean(a) - mean(b)
    se: float  # standard error of the difference
    t: float
    df: float
    p: float  # one-sided p-value

    def interval(self, level: float = LEVEL) -> Interval:
        """Two-sided Welch interval of the difference."""
        if self.se == 0:
            return Interval(self.difference, self.difference, self.difference)
        half = float(sps.t.ppf(0.5 + level / 2, self.df)) * self.se
        return Interval(self.difference, self.difference - half, self.difference + half)

    def to_json(self) -> dict:
        out = {k: undefined_as_none(getattr(self, k)) for k in ("difference", "se", "t", "df", "p")}
        return {**out, "interval": self.interval().to_json()}


def undefined_as_none(obj):
    """Each non-finite float (an undefined ratio or a resample without spread) -> ``None``.

    A fight's figures are read back as numbers, so "undefined" is JSON's ``null`` before
    ``atomic.write_json`` ever sees the value; the one place this happens for records and
    statistics alike."""
    if isinstance(obj, dict):
        return {k: undefined_as_none(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [undefined_as_none(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def mean_ci(values: Sequence[float], level: float = LEVEL) -> Interval:
    """Student-t interval of the mean; one value gives an interval of zero width at that value."""
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        raise ValueError("mean_ci needs at least one value")
    mean = float(x.mean())
    if x.size == 1:
        return Interval(mean, mean, mean)
    half = sps.t.ppf(0.5 + level / 2, x.size - 1) * x.std(ddof=1) / math.sqrt(x.size)
    return Interval(mean, mean - float(half), mean + float(half))


def welch(a: Sequence[float], b: Sequence[float], margin: float = 0.0) -> Welch:
    """Welch's t for H1: ``mean(a) > mean(b) - margin`` (non-inferiority when ``margin > 0``).

    Unequal variances, Welch-Satterthwaite degrees of freedom. When both samples have zero
    variance the difference is exact: p is 0 if it clears the margin and 1 otherwise.
    """
    xa, xb = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if xa.size < 2 or xb.size < 2:
        raise ValueError("welch needs at least two values per sample")
    va, vb = xa.var(ddof=1) / xa.size, xb.var(ddof=1) / xb.size
    diff = float(xa.mean() - xb.mean())
    se2 = va + vb
    if se2 == 0:
        clears = diff + margin > 0
        inf = math.inf if clears else -math.inf
        return Welch(diff, 0.0, inf, math.inf, 0.0 if clears else 1.0)
    t = (diff + margin) / math.sqrt(se2)
    df = se2**2 / (va**2 / (xa.size - 1) + vb**2 / (xb.size - 1))
    return Welch(diff, math.sqrt(se2), float(t), float(df), float(sps.t.sf(t, df)))


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values, in the order given (family-wise error control)."""
    m = len(pvalues)
    order = sorted(range(m), key=lambda i: pvalues[i])
    adjusted = [0.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        adjusted[i] = running
    return adjusted


def bootstrap(
    groups: Sequence[object],
    statistic: Callable[[list[object]], float | None],
    n_boot: int,
    seed: int = 0,
    level: float = LEVEL,
) -> Interval | None:
    """Percentile interval of ``statistic`` over resamples of ``groups`` with replacement.

    The groups are the seeds: each holds every run of one seed, so a resample keeps the
    pairing that a shared seed gives (the same split and initialisation for every family).
    Resamples where the statistic is undefined (``None``) count as ``-inf``, the side on
    which an undefined equal-accuracy ratio (CR never reached the threshold) belongs.
    """
    point = statistic(list(groups))
    if point is None:
        return None
    rng = np.random.default_rng(seed)
    values = np.empty(n_boot)
    for k in range(n_boot):
        picked = rng.integers(0, len(groups), size=len(groups))
        v = statistic([groups[i] for i in picked])
        values[k] = -math.inf if v is None else v
    alpha = (1 - level) / 2
    low, high = np.quantile(values, [alpha, 1 - alpha], method="inverted_cdf")
    return Interval(float(point), float(low), float(high))
