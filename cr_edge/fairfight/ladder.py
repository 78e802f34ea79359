"""What a Fair Fight trains: the same tuning grid, ladder and probes for every family.

A fight has two phases. **Tuning** trains each (family, architecture) at one width
on every point of its grid and keeps the one with the best *validation* accuracy;
every family gets the same number of trials (a DREG family spends them on learning
rate x lambda, the others on a finer learning-rate grid over the same range). The
**ladder** then trains every family at every width and seed with its chosen
settings, and the **probes** retrain one width on 10-50% of the training split
(sample efficiency). Epochs, early stopping, batch size and optimiser are shared;
the test split never chooses anything.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
from dataclasses import dataclass

from cr_edge.errors import InputError
from cr_edge.fairfight.metric import ACCURACY, Metric
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
PROBE_ARCH = "depth1"  # the sample-efficiency and robustness probes' architecture


@dataclass(frozen=True)
class Budget:
    """Everything a fight spends, checked on construction."""

    widths: tuple[int, ...]  # MLP widths
    conv_widths: tuple[int, ...]  # conv channels (a conv stage costs ~9x a dense unit)
    seeds: tuple[int, ...]
    epochs: int
    patience: int
    lrs: tuple[float, ...]  # the non-DREG families' grid
    dreg_lrs: tuple[float, ...]  # the DREG families' grid is dreg_lrs x lambdas ...
    lambdas: tuple[float, ...]  # ... of the same size as lrs: an equal budget
    tune_width: int
    fractions: tuple[float, ...]  # sample-efficiency probes below 100% of the training split
    bootstrap: int  # resamples per bootstrap interval
    profile_iters: int  # timed runs per setting for latency at equal accuracy
    families: tuple[str, ...] = tuple(f.name for f in FAMILIES)
    archs: tuple[str, ...] = ARCHS
    wide_datasets: tuple[str, ...] = ("mnist1d",)  # these also climb to 512
    wide_width: int = 512

    def __post_init__(self) -> None:
        if len(self.lrs) != len(self.dreg_lrs) * len(self.lambdas):
            raise ValueError("a budget must give DREG and plain families as many trials")
        if len(self.seeds) < 2:
            raise ValueError("confidence intervals need at least two seeds")
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
        extra = (self.wide_width,) if dataset in self.wide_datasets else ()
        return (*self.widths, *extra)

    def grid(self, family: Family) -> list[tuple[float, float]]:
        """(lr, lambda) trials; lambda is 0 for the families trained without DREG."""
        if family.dreg:
            return [(lr, lam) for lr in self.dreg_lrs for lam in self.lambdas]
        return [(lr, 0.0) for lr in self.lrs]


BUDGETS = {
    # CI: every phase and column at toy sizes; about 30 CPU-seconds
    "quick": Budget(
        widths=(4, 16),
        conv_widths=(4,),
        seeds=(0, 1),
        epochs=3,
        patience=3,
        lrs=(1e-2,),
        dreg_lrs=(1e-2,),
        lambdas=(3e-3,),
        tune_width=16,
        fractions=(0.25,),
        bootstrap=200,
        profile_iters=200,
        archs=("depth1", "conv"),
    ),
    # the README's tables: CR against tuned ReLU and GELU (the DREG ablations, cr-nodreg and the DREG'd baselines, are in ``full``)
    "standard": Budget(
        widths=(4, 32, 256),
        conv_widths=(4, 16),
        seeds=(0, 1, 2, 3, 4),
        epochs=15,
        patience=5,
        # octaves 1e-3 .. 3.2e-2: a grid of 1e-3 .. 8e-3 put nearly every family's best lr on
        # its top edge on mnist1d (and 6 of 9 on digits)
        lrs=tuple(1e-3 * 2**k for k in range(6)),
        dreg_lrs=(2e-3, 8e-3, 3.2e-2),
        lambdas=(1e-3, 1e-2),
        tune_width=32,
        fractions=(0.1, 0.25, 0.5),
        bootstrap=1000,
        profile_iters=2000,
        families=("cr", "relu", "gelu"),
    ),
    # a cluster job (--ray ADDRESS): every family, more seeds, widths and epochs, a finer grid
    "full": Budget(
        widths=(2, 4, 8, 16, 32, 64, 128, 256),
        conv_widths=(4, 8, 16, 32, 64, 128),
        seeds=tuple(range(10)),
        epochs=100,
        patience=15,
        lrs=tuple(1e-3 * 2 ** (k / 2) for k in range(9)),
        dreg_lrs=(1e-3, 4e-3, 1.6e-2),
        lambdas=(3e-4, 3e-3, 3e-2),
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
    default = {**Recipe().to_json(), "poly_form": "monomial"}
    settings = {k: v for k, v in recipe.to_json().items() if v != default.get(k)}
    if recipe.activation != "poly":
        settings.pop("poly_form", None)
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
    lr: float,
    lam: float,
    budget: Budget,
    data: str,
    label: str | None,
    fraction: float = 1.0,
    task: str = "classify",
) -> Task:
    hidden = (width, width) if arch in ("depth2", "conv") else (width,)
    recipe = Recipe(
        name=f"{family.name}-{arch}-w{width}",
        data=data,
        label=label,
        task=task,
        arch="conv" if arch == "conv" else "mlp",
        hidden=hidden,
        activation=family.activation,
        dreg=lam,
        lr=lr,
        epochs=budget.epochs,
        patience=budget.patience,
        seed=seed,
        train_fraction=fraction,
        # the papers' recipe, unstabilised: clipping would also cap the step-gradient norms
        # whose tail the report measures
        clip_grad=0.0,
        range_penalty=0.0,
    )
    return Task(phase, family.name, arch, width, seed, lr, lam, fraction, recipe)


def tuning_tasks(
    data: str,
    budget: Budget,
    archs: tuple[str, ...],
    label: str | None = None,
    task: str = "classify",
) -> list[Task]:
    """Every grid point of every (family, architecture), at the tuning width, first seed."""
    return [
        _task(
            "tune",
            fam,
            arch,
            _tune_width(budget, arch, data),
            budget.seeds[0],
            lr,
            lam,
            budget,
            data,
            label,
            task=task,
        )
        for fam in budget.family_list
        for arch in archs
        for lr, lam in budget.grid(fam)
    ]


def _tune_width(budget: Budget, arch: str, data: str) -> int:
    widths = budget.widths_for(arch, data)
    return min(widths, key=lambda w: abs(w - budget.tune_width))


def choose(
    tune_records: list[dict], metric: Metric = ACCURACY
) -> dict[tuple[str, str], tuple[float, float]]:
    """Per (family, arch): the (lr, lambda) with the best validation metric.

    Ties go to the earlier grid point (records arrive in grid order), never to the test split;
    a trial whose training failed (diverged or collapsed) is never chosen.
    """
    best: dict[tuple[str, str], tuple[float, tuple[float, float]]] = {}
    for r in tune_records:
        if r.get("failed"):
            continue
        key = (r["family"], r["arch"])
        val = metric.score(r[f"val_{metric.key}"])
        if key not in best or val > best[key][0]:
            best[key] = (val, (r["lr"], r["dreg"]))
    return {k: v[1] for k, v in best.items()}


def ladder_tasks(
    data: str,
    budget: Budget,
    archs: tuple[str, ...],
    chosen: dict[tuple[str, str], tuple[float, float]],
    label: str | None = None,
    task: str = "classify",
) -> list[Task]:
    """The ladder (every width and seed) and the sample-efficiency probes (depth 1 at the
    tuning width, every seed and fraction), each with its family's tuned settings."""
    make = functools.partial(_task, budget=budget, data=data, label=label, task=task)
    tasks = []
    for fam in budget.family_list:
        for arch in archs:
            lr, lam = chosen.get((fam.name, arch), budget.grid(fam)[0])
            for width in budget.widths_for(arch, data):
                for seed in budget.seeds:
                    tasks.append(make("ladder", fam, arch, width, seed, lr, lam))
        lr, lam = chosen.get((fam.name, PROBE_ARCH), budget.grid(fam)[0])
        width = probe_width(budget, data)
        for fraction in budget.fractions:
            for seed in budget.seeds:
                tasks.append(
                    make("probe", fam, PROBE_ARCH, width, seed, lr, lam, fraction=fraction)
                )
    return tasks


def probe_width(budget: Budget, data: str) -> int:
    return _tune_width(budget, PROBE_ARCH, data)
