"""What a Fair Fight trains: the same tuning grid, ladder and probes for every family.

A fight has two phases. **Tuning** trains each (family, architecture) on every point of
its grid, at two widths and on several seeds, and keeps the point with the best *mean
validation* score. Every family gets the same number of trials on the same log-2
learning-rate grid; its second axis is its regulariser: lambda (0 included) for a DREG
family, weight decay for the others, on grids of equal length. A grid whose edge wins is
extended by one step, in rounds, up to ``Budget.extend_limit`` steps per edge
(``extension_tasks``; ``grid_edges`` says where that happened). The **ladder** then
trains every family at every width and seed with its chosen settings, and the **probes**
retrain one MLP and one conv width on 10-50% of the training split (sample efficiency),
each for as many optimiser steps as a run on the whole split. Epochs, the cosine
learning-rate schedule, early stopping, batch size and optimiser are shared; the test
split never chooses anything.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
from collections import defaultdict
from dataclasses import dataclass
from typing import NamedTuple

from cr_edge.errors import InputError
from cr_edge.fairfight.metric import ACCURACY, Metric
from cr_edge.fairfight.verdict import MIN_SEEDS
from cr_edge.nets import NetConfig
from cr_edge.recipe import Recipe


@dataclass(frozen=True)
class Family:
    name: str
    activation: str
    dreg: bool  # trained with the DREG penalty (its lambda is tuned)


FAMILIES = (
    Family("cr", "poly", True),
    Family("cr-nodreg", "poly", False),
    Family("relu", "relu", False),
    Family("relu-dreg", "relu", True),
    Family("gelu", "gelu", False),
    Family("gelu-dreg", "gelu", True),
)
FAMILY_BY_NAME = {f.name: f for f in FAMILIES}

# Architectures: one or two hidden layers of the ladder's width, or two convolution stages
# (Conv2d on images, Conv1d on sequences) of that many channels.
ARCHS = ("depth1", "depth2", "conv")
PROBE_ARCH = "depth1"  # every budget's sample-efficiency probes include this architecture
PROBE_ARCHS = ("depth1", "conv")  # ... and these where the budget and the data have them


DEFAULT_WEIGHT_DECAY = Recipe().weight_decay


@dataclass(frozen=True)
class Budget:
    """Everything a fight spends, checked on construction."""

    widths: tuple[int, ...]  # MLP widths
    conv_widths: tuple[int, ...]  # conv channels (a conv stage costs ~9x a dense unit)
    seeds: tuple[int, ...]
    epochs: int
    patience: int
    lrs: tuple[float, ...]  # every family's learning rates, log-2 spaced
    lambdas: tuple[float, ...]  # a DREG family's second axis (0 first: no penalty) ...
    weight_decays: tuple[float, ...]  # ... the others': as many values, an equal budget
    tune_widths: tuple[int, ...]  # MLP widths a grid point is scored at (mean over them) ...
    conv_tune_widths: tuple[int, ...]  # ... and conv ones
    tune_seeds: tuple[int, ...]  # seeds a grid point is scored on (mean over them)
    extend_limit: int  # steps an edge-winning axis may grow past each edge of its grid
    tune_width: int  # the probes' width (sample efficiency, robustness)
    fractions: tuple[float, ...]  # sample-efficiency probes below 100% of the training split
    bootstrap: int  # resamples per bootstrap interval
    profile_iters: int  # timed runs per setting for latency at equal accuracy
    families: tuple[str, ...] = tuple(f.name for f in FAMILIES)
    archs: tuple[str, ...] = ARCHS
    wide_datasets: tuple[str, ...] = ("mnist1d",)  # these also climb to 512
    wide_width: int = 512

    def __post_init__(self) -> None:
        if len(self.lambdas) != len(self.weight_decays):
            raise ValueError("a budget must give DREG and plain families as many trials")
        if any(not math.isclose(b / a, 2.0) for a, b in zip(self.lrs, self.lrs[1:], strict=False)):
            raise ValueError("learning rates are a log-2 grid: each twice the one before")
        for name, axis in (("lambdas", self.lambdas), ("weight_decays", self.weight_decays)):
            if list(axis) != sorted(set(axis)) or axis[0] < 0:
                raise ValueError(f"{name} must be distinct, ascending and >= 0")
        if len(self.seeds) < MIN_SEEDS:  # else every ladder point is "insufficient"
            raise ValueError(f"a ladder point counts with {MIN_SEEDS} finished seeds or more")
        if not all(0 < f < 1 for f in self.fractions):
            raise ValueError("sample-efficiency fractions lie in (0, 1)")
        if "cr" not in self.families or not {"relu", "gelu"} & set(self.families):
            raise ValueError("a budget must train the cr family and a baseline family")
        if PROBE_ARCH not in self.archs:
            raise ValueError(f"a budget must include {PROBE_ARCH}, the probes' architecture")

    @property
    def family_list(self) -> tuple[Family, ...]:
        return tuple(f for f in FAMILIES if f.name in self.families)

    def widths_for(self, arch: str, dataset: str) -> tuple[int, ...]:
        if arch == "conv":
            return self.conv_widths
        extra = (
            (self.wide_width,)
            if dataset in self.wide_datasets and self.wide_width not in self.widths
            else ()
        )
        return (*self.widths, *extra)

    def tune_widths_for(self, arch: str) -> tuple[int, ...]:
        return self.conv_tune_widths if arch == "conv" else self.tune_widths

    def second_axis(self, family: Family) -> tuple[float, ...]:
        """The family's regulariser grid: lambda with DREG, weight decay without."""
        return self.lambdas if family.dreg else self.weight_decays

    def grid(self, family: Family) -> list[Setting]:
        """The family's trials: every learning rate x every value of its second axis."""
        return [_setting(family, lr, v) for lr in self.lrs for v in self.second_axis(family)]

    def default_setting(self, family: Family) -> Setting:
        """What a family trains with when tuning chose nothing (every trial failed)."""
        return self.grid(family)[0]


class Setting(NamedTuple):
    """A tuning trial's hyperparameters, and what the ladder trains a family with."""

    lr: float
    dreg: float  # 0 for a family trained without DREG
    weight_decay: float = DEFAULT_WEIGHT_DECAY


def _setting(family: Family, lr: float, second: float) -> Setting:
    if family.dreg:
        return Setting(lr, second, DEFAULT_WEIGHT_DECAY)
    return Setting(lr, 0.0, second)


def _second(family: Family, s: Setting) -> float:
    return s.dreg if family.dreg else s.weight_decay


BUDGETS = {
    # CI: every phase and column at toy sizes; about 30 CPU-seconds. One trial per family, one
    # seed, one width: nothing to extend (extend_limit 0)
    "quick": Budget(
        widths=(4, 16),
        conv_widths=(4,),
        seeds=(0, 1, 2),
        epochs=3,
        patience=3,
        lrs=(1e-2,),
        lambdas=(3e-3,),
        weight_decays=(DEFAULT_WEIGHT_DECAY,),
        tune_widths=(16,),
        conv_tune_widths=(4,),
        tune_seeds=(0,),
        extend_limit=0,
        tune_width=16,
        fractions=(0.25,),
        bootstrap=200,
        profile_iters=200,
        archs=("depth1", "conv"),
    ),
    # the README's tables: CR against tuned ReLU and GELU (the DREG ablations, cr-nodreg and
    # the DREG'd baselines, are in ``full``). Cosine schedule over 60 epochs, patience 12: on
    # mnist1d, CR conv w16 at lr 8e-3 and 1.6e-2, 3 seeds, best epochs 32-48 (none in the
    # last 10%), 5 of 6 runs ended by early stopping, test 0.905-0.941 (against 0.867/0.872
    # at 15 constant-rate epochs); MLP w32 at 4e-3 and 1.6e-2: best epochs 26-40, all 6
    # stopped early. lambda spans 1e-4..1e-1 (per position for conv, so one grid fits both);
    # each axis may grow 2 steps past each edge.
    "standard": Budget(
        widths=(8, 16, 32, 64, 128, 256, 512),  # 2x steps resolve ratios between 1x and 8x
        conv_widths=(4, 8, 16, 32, 64),
        seeds=(0, 1, 2, 3, 4),
        epochs=60,
        patience=12,
        lrs=(4e-3, 8e-3, 1.6e-2),
        lambdas=(0.0, 1e-4, 10**-2.5, 1e-1),
        weight_decays=(0.0, 1e-4, 10**-2.5, 1e-1),
        tune_widths=(32, 128),
        conv_tune_widths=(8, 16),
        tune_seeds=(0, 1, 2),
        extend_limit=2,
        tune_width=32,
        fractions=(0.1, 0.25, 0.5),
        bootstrap=1000,
        profile_iters=2000,
        families=("cr", "relu", "gelu"),
    ),
    # a cluster job (--ray ADDRESS): every family, more seeds, widths and epochs, a finer grid
    "full": Budget(
        widths=(8, 16, 32, 64, 128, 256, 512),
        conv_widths=(4, 8, 16, 32, 64),
        seeds=tuple(range(10)),
        epochs=150,
        patience=20,
        lrs=tuple(1e-3 * 2**k for k in range(6)),
        lambdas=(0.0, 1e-4, 1e-3, 1e-2, 1e-1),
        weight_decays=(0.0, 1e-4, 1e-3, 1e-2, 1e-1),
        tune_widths=(32, 128),
        conv_tune_widths=(16, 64),
        tune_seeds=(0, 1, 2, 3, 4),
        extend_limit=3,
        tune_width=64,
        fractions=(0.1, 0.25, 0.5),
        bootstrap=5000,
        profile_iters=5000,
    ),
}


def budget_named(name: str) -> Budget:
    if name not in BUDGETS:
        raise InputError(f"--budget {name!r}: choose {', '.join(BUDGETS)}")
    return BUDGETS[name]


@dataclass(frozen=True)
class Task:
    """One training run; its record depends on nothing but these fields."""

    phase: str  # "tune", "ladder" or "probe"
    family: str
    arch: str
    width: int
    seed: int
    lr: float
    dreg: float
    fraction: float
    recipe: Recipe

    @property
    def key(self) -> str:
        """A file-safe name, unique within a fight, with a digest of the recipe's settings so
        that a changed budget never reuses a record trained under other settings."""
        blob = json.dumps(_settings(self.recipe), sort_keys=True).encode()
        digest = hashlib.sha256(blob).hexdigest()[:10]
        f = "" if self.fraction == 1.0 else f"-f{self.fraction:g}"
        return f"{self.phase}-{self.family}-{self.arch}-w{self.width}-s{self.seed}{f}-{digest}"

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        d["recipe"] = self.recipe.to_json()
        return d

    @classmethod
    def from_json(cls, d: dict) -> Task:
        return cls(**{**d, "recipe": Recipe.from_json(d["recipe"])})


def _settings(recipe: Recipe) -> dict:
    """The recipe's JSON without the fields left at their defaults: a field that a later
    version adds, at a default that trains as before, keeps every task's key (and its
    finished record) as it was."""
    # poly_form did change training: records from before it trained the monomial form, so
    # that is the default a key leaves out; a baseline has no polynomial to form.
    # So did the schedule and DREG's per-position conv term: keys name them unless they are
    # what older records trained with (constant, summed).
    default = {
        **Recipe().to_json(),
        "poly_form": "monomial",
        "lr_schedule": "constant",
        "dreg_positions": "sum",
    }
    settings = {k: v for k, v in recipe.to_json().items() if v != default.get(k)}
    if recipe.activation != "poly":
        settings.pop("poly_form", None)
    if recipe.arch != "conv" or recipe.dreg_lambda == 0:  # the reduction has nothing to reduce
        settings.pop("dreg_positions", None)
    return settings


def archs_for(budget: Budget, input_shape: tuple[int, ...]) -> tuple[str, ...]:
    """The budget's archs; conv only where the nets can convolve these samples."""
    try:
        NetConfig(arch="conv", input_shape=tuple(input_shape))
    except ValueError:
        return tuple(a for a in budget.archs if a != "conv")
    return budget.archs


def _task(
    phase: str,
    family: Family,
    arch: str,
    width: int,
    seed: int,
    setting: Setting,
    budget: Budget,
    data: str,
    label: str | None,
    fraction: float = 1.0,
    task: str = "classify",
) -> Task:
    hidden = (width, width) if arch in ("depth2", "conv") else (width,)
    epochs, patience = fixed_steps(budget.epochs, budget.patience, fraction)
    recipe = Recipe(
        name=f"{family.name}-{arch}-w{width}",
        data=data,
        label=label,
        task=task,
        arch="conv" if arch == "conv" else "mlp",
        hidden=hidden,
        activation=family.activation,
        dreg_lambda=setting.dreg,
        # per output position: one lambda grid fits MLP and conv nets (at initialisation the
        # summed conv term was ~20x a dense layer's on mnist1d)
        dreg_positions="mean",
        lr=setting.lr,
        lr_schedule="cosine",
        weight_decay=setting.weight_decay,
        epochs=epochs,  # on a fraction of the data: the full split's number of steps
        patience=patience,
        seed=seed,
        train_fraction=fraction,
        # the papers' recipe, unstabilised: clipping would also cap the step-gradient norms
        # whose tail the report measures
        clip_grad=0.0,
        range_penalty=0.0,
    )
    return Task(phase, family.name, arch, width, seed, setting.lr, setting.dreg, fraction, recipe)


def _trial_tasks(
    family: Family,
    arch: str,
    settings: list[Setting],
    budget: Budget,
    data: str,
    label: str | None,
    task: str,
) -> list[Task]:
    """Each setting at every tuning width and seed."""
    return [
        _task("tune", family, arch, w, seed, st, budget, data, label, task=task)
        for st in settings
        for w in budget.tune_widths_for(arch)
        for seed in budget.tune_seeds
    ]


def tuning_tasks(
    data: str,
    budget: Budget,
    archs: tuple[str, ...],
    label: str | None = None,
    task: str = "classify",
) -> list[Task]:
    """Every grid point of every (family, architecture), at each tuning width and seed."""
    return [
        t
        for fam in budget.family_list
        for arch in archs
        for t in _trial_tasks(fam, arch, budget.grid(fam), budget, data, label, task)
    ]


def _tune_width(budget: Budget, arch: str, data: str) -> int:
    widths = budget.widths_for(arch, data)
    return min(widths, key=lambda w: abs(w - budget.tune_width))


def _record_setting(r: dict) -> Setting:
    # records from before weight decay was tuned trained with the recipe's default
    return Setting(r["lr"], r["dreg"], r.get("weight_decay", DEFAULT_WEIGHT_DECAY))


def trial_scores(
    tune_records: list[dict], metric: Metric = ACCURACY
) -> dict[tuple[str, str], dict[Setting, float]]:
    """Per (family, arch), each setting's mean validation score over its widths and seeds
    (oriented: higher is better), in the order the settings first appear. A setting with a
    failed run (diverged or collapsed) scores -inf: it is never chosen."""
    runs: dict[tuple[str, str], dict[Setting, list[float]]] = defaultdict(dict)
    for r in tune_records:
        key = (r["family"], r["arch"])
        scores = runs[key].setdefault(_record_setting(r), [])
        scores.append(-math.inf if r.get("failed") else metric.score(r[f"val_{metric.key}"]))
    return {k: {st: sum(v) / len(v) for st, v in per.items()} for k, per in runs.items()}


def choose(tune_records: list[dict], metric: Metric = ACCURACY) -> dict[tuple[str, str], Setting]:
    """Per (family, arch): the setting with the best mean validation metric.

    Ties go to the earlier grid point (records arrive in grid order), never to the test split;
    a setting with a failed run is never chosen, and a (family, arch) whose every setting
    failed is left out (the ladder then trains its first grid point).
    """
    chosen = {}
    for key, scores in trial_scores(tune_records, metric).items():
        best = max(scores, key=lambda st: scores[st])  # max keeps the first of equal scores
        if scores[best] > -math.inf:
            chosen[key] = best
    return chosen


def _axes(family: Family, settings: list[Setting]) -> tuple[list[float], list[float]]:
    lrs = sorted({st.lr for st in settings})
    return lrs, sorted({_second(family, st) for st in settings})


def _edge_steps(
    family: Family, budget: Budget, best: Setting, tried: list[Setting]
) -> list[tuple[str, Setting | None]]:
    """Each edge of the tried grid that ``best`` sits on, with the setting one step past it,
    or ``None`` where ``extend_limit`` steps past the budget's grid were already taken.

    The learning rate grows both ways by factors of 2; the second axis grows upward only, by
    its top step (its bottom is 0, no regulariser at all).
    """
    lrs, seconds = _axes(family, tried)
    base_lrs, base_seconds = budget.lrs, budget.second_axis(family)
    limit = budget.extend_limit
    edges: list[tuple[str, Setting | None]] = []
    if len(lrs) > 1 and best.lr == lrs[-1]:
        room = sum(lr > base_lrs[-1] * 1.001 for lr in lrs) < limit
        edges.append(("lr high", best._replace(lr=lrs[-1] * 2) if room else None))
    if len(lrs) > 1 and best.lr == lrs[0]:
        room = sum(lr < base_lrs[0] / 1.001 for lr in lrs) < limit
        edges.append(("lr low", best._replace(lr=lrs[0] / 2) if room else None))
    v = _second(family, best)
    if len(seconds) > 1 and v == seconds[-1] and v > 0:
        room = sum(x > base_seconds[-1] for x in seconds) < limit
        step = seconds[-1] / seconds[-2] if seconds[-2] > 0 else 10.0
        name = "lambda high" if family.dreg else "weight_decay high"
        edges.append((name, _setting(family, best.lr, v * step) if room else None))
    return edges


def extension_tasks(
    data: str,
    budget: Budget,
    archs: tuple[str, ...],
    tune_records: list[dict],
    label: str | None = None,
    task: str = "classify",
    metric: Metric = ACCURACY,
) -> list[Task]:
    """The next tuning round: where a grid's edge won, one step past it (the winner's other
    coordinate kept), at every tuning width and seed. Empty once no winner sits on an edge
    that may still grow: run rounds until it is. Stateless, so a resumed fight asks for
    the same rounds and finds their records."""
    scores = trial_scores(tune_records, metric)
    chosen = choose(tune_records, metric)
    out = []
    for fam in budget.family_list:
        for arch in archs:
            best = chosen.get((fam.name, arch))
            if best is None:
                continue
            tried = list(scores[(fam.name, arch)])
            steps = _edge_steps(fam, budget, best, tried)
            new = [st for _, st in steps if st is not None and st not in tried]
            out += _trial_tasks(fam, arch, new, budget, data, label, task)
    return out


def grid_edges(budget: Budget, tune_records: list[dict], metric: Metric = ACCURACY) -> list[dict]:
    """Per (family, arch), for the report: the values tuning added past the budget's grid,
    and ``bound``, the edges the chosen setting still sits on with no step left (the limit
    was reached), where the true optimum may lie outside what was tried."""
    scores = trial_scores(tune_records, metric)
    rows = []
    for (family, arch), best in choose(tune_records, metric).items():
        fam = FAMILY_BY_NAME[family]
        tried = list(scores[(family, arch)])
        lrs, seconds = _axes(fam, tried)
        base = budget.second_axis(fam)
        rows.append(
            {
                "family": family,
                "arch": arch,
                "axis": "lambda" if fam.dreg else "weight_decay",
                "added_lrs": [x for x in lrs if not any(math.isclose(x, b) for b in budget.lrs)],
                "added_second": [x for x in seconds if not any(math.isclose(x, b) for b in base)],
                "chosen": best._asdict(),
                "bound": [name for name, st in _edge_steps(fam, budget, best, tried) if st is None],
            }
        )
    return rows


def ladder_tasks(
    data: str,
    budget: Budget,
    archs: tuple[str, ...],
    chosen: dict[tuple[str, str], Setting],
    label: str | None = None,
    task: str = "classify",
) -> list[Task]:
    """The ladder (every width and seed) and the sample-efficiency probes (depth 1 and conv
    at their probe widths, every seed and fraction, at the full split's number of optimiser
    steps), each with its family's tuned settings."""
    make = functools.partial(_task, budget=budget, data=data, label=label, task=task)
    tasks = []
    for fam in budget.family_list:
        for arch in archs:
            setting = Setting(*chosen.get((fam.name, arch), budget.default_setting(fam)))
            for width in budget.widths_for(arch, data):
                for seed in budget.seeds:
                    tasks.append(make("ladder", fam, arch, width, seed, setting))
        for arch in probe_archs(archs):
            setting = Setting(*chosen.get((fam.name, arch), budget.default_setting(fam)))
            width = probe_width(budget, data, arch)
            for fraction in budget.fractions:
                for seed in budget.seeds:
                    tasks.append(make("probe", fam, arch, width, seed, setting, fraction=fraction))
    return tasks


def probe_archs(archs: tuple[str, ...]) -> tuple[str, ...]:
    """The architectures whose sample efficiency is probed: an MLP and, where the data
    convolves, a conv net (each compared with its own architecture's best baseline)."""
    return tuple(a for a in PROBE_ARCHS if a in archs)


def probe_width(budget: Budget, data: str, arch: str = PROBE_ARCH) -> int:
    """The ladder width nearest the probe width: ``tune_width`` for MLPs, the largest conv
    tuning width for conv nets (both are ladder points, so 100% comes from the ladder)."""
    if arch == "conv":
        target = max(budget.conv_tune_widths)
        return min(budget.conv_widths, key=lambda w: abs(w - target))
    return _tune_width(budget, arch, data)


def fixed_steps(epochs: int, patience: int, fraction: float) -> tuple[int, int]:
    """Epochs and patience that give a run on ``fraction`` of the training split as many
    optimiser steps (and as many steps of patience) as ``epochs`` on all of it: sample
    efficiency compares what data buys at equal optimisation, not how fast a net learns
    in a fixed number of (shorter) epochs."""
    return max(1, round(epochs / fraction)), max(1, round(patience / fraction))
