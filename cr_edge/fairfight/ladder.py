"""What a Fair Fight trains: the same ladder of widths and seeds for every family.

Only the activation, the width and DREG change between runs; optimiser, epochs,
batch size, learning rate and seeds are shared, so differences are the
activation's and not the recipe's.
"""

from __future__ import annotations

from dataclasses import dataclass

from cr_edge.dreg import DEFAULT_LAMBDA
from cr_edge.errors import InputError
from cr_edge.recipe import Recipe


@dataclass(frozen=True)
class Family:
    name: str
    activation: str
    dreg: float


FAMILIES = (
    Family("cr", "poly", DEFAULT_LAMBDA),
    Family("cr-nodreg", "poly", 0.0),
    Family("relu", "relu", 0.0),
    Family("relu-dreg", "relu", DEFAULT_LAMBDA),
    Family("gelu", "gelu", 0.0),
    Family("gelu-dreg", "gelu", DEFAULT_LAMBDA),
)


@dataclass(frozen=True)
class Budget:
    widths: tuple[int, ...]
    seeds: tuple[int, ...]
    epochs: int
    patience: int


BUDGETS = {
    # a smoke run: small widths, two seeds, a few epochs (the test suite runs this)
    "quick": Budget(widths=(4, 16), seeds=(0, 1), epochs=40, patience=40),
    # the README's figures
    "full": Budget(widths=(2, 4, 8, 16, 32, 64), seeds=(0, 1, 2), epochs=60, patience=15),
}


@dataclass(frozen=True)
class RunSpec:
    family: Family
    width: int
    seed: int
    recipe: Recipe

    @property
    def name(self) -> str:
        return f"{self.family.name}-w{self.width}-s{self.seed}"


def ladder(
    data: str, budget: str, label: str | None = None, widths: tuple[int, ...] | None = None
) -> list[RunSpec]:
    """Every (family, width, seed) of the budget, each with its shared-settings recipe."""
    if budget not in BUDGETS:
        raise InputError(f"--budget {budget!r}: choose {', '.join(BUDGETS)}")
    b = BUDGETS[budget]
    specs = []
    for family in FAMILIES:
        for width in widths or b.widths:
            for seed in b.seeds:
                recipe = Recipe(
                    name=f"{family.name}-w{width}",
                    data=data,
                    label=label,
                    hidden=(width,),
                    activation=family.activation,
                    dreg=family.dreg,
                    epochs=b.epochs,
                    patience=b.patience,
                    seed=seed,
                )
                specs.append(RunSpec(family, width, seed, recipe))
    return specs
