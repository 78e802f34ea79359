"""The command line's parameter types: comma lists that click checks before a command runs.

A bad value becomes click's one-line "Invalid value for '--x'" with exit 2, the same
as for a ``click.Choice``. Name lists read their vocabulary from the library lazily
(on the first conversion), so ``cr-edge --help`` does not import onnx or torch.
"""

from __future__ import annotations

import importlib
from typing import Any

import click


class IntList(click.ParamType):
    """``"1,8,64"`` -> ``(1, 8, 64)``: positive integers, order kept.

    Repeats are dropped from a set of values (batch sizes) but kept in a sequence
    (``distinct=False``: hidden widths, where ``64,64`` is two layers).
    """

    name = "N[,N...]"

    def __init__(
        self, example: str = "1,8,64", all_word: str | None = None, distinct: bool = True
    ) -> None:
        self.example = example
        self.distinct = distinct
        self.all_word = all_word  # a word that stands for "every value", passed through as is

    def convert(self, value: Any, param, ctx) -> Any:
        if isinstance(value, tuple) or (self.all_word and value == self.all_word):
            return value
        try:
            numbers = tuple(int(v) for v in str(value).split(",") if v.strip())
        except ValueError:
            numbers = ()
        if not numbers or min(numbers) < 1:
            extra = f", or {self.all_word}" if self.all_word else ""
            self.fail(
                f"{value!r}: give comma-separated positive integers such as {self.example}{extra}",
                param,
                ctx,
            )
        return tuple(dict.fromkeys(numbers)) if self.distinct else numbers


class NameList(click.ParamType):
    """``"cpu,ort-mobile"`` -> ``("cpu", "ort-mobile")``, each checked against a vocabulary.

    ``vocabulary`` is the names, or ``"module:NAME"``, a tuple of names imported on first use.
    ``all_word`` (e.g. ``all``) stands for every name and is returned alone.
    """

    name = "NAME[,NAME...]"

    def __init__(
        self, vocabulary: str | tuple[str, ...], noun: str, all_word: str | None = None
    ) -> None:
        self.vocabulary = vocabulary
        self.noun = noun  # what one name is, for the message: "unknown runtime 'tpu'"
        self.all_word = all_word

    def names(self) -> tuple[str, ...]:
        if isinstance(self.vocabulary, tuple):
            return self.vocabulary
        module, _, attr = self.vocabulary.partition(":")
        return tuple(getattr(importlib.import_module(module), attr))

    def convert(self, value: Any, param, ctx) -> Any:
        if isinstance(value, tuple):
            return value
        given = tuple(dict.fromkeys(v.strip() for v in str(value).split(",") if v.strip()))
        if self.all_word and self.all_word in given:
            return (self.all_word,)
        known = self.names()
        unknown = [g for g in given if g not in known]
        if unknown or not given:
            also = f" or {self.all_word}" if self.all_word else ""
            what = f"unknown {self.noun} {unknown[0]!r}" if unknown else f"no {self.noun} named"
            self.fail(f"{what}; choose from {', '.join(known)}{also}", param, ctx)
        return given


RUNTIMES = NameList("cr_edge.runtimes.registry:RUNTIME_NAMES", "runtime", all_word="all")
RUNTIME_HELP = "cpu, ort-mobile, xnnpack, nnapi, coreml, executorch-xnnpack: a comma list, or all."
# quantize and pipeline: one meaning for --certify-on
CERTIFY_HELP = (
    "Certify quantize's candidates on these devices too (cr-edge device add): one qualifies "
    "only if it passes there as well as here; auto: the emulated ARM64 device "
    "(neoverse-n1) where it can be built; none: no device."
)


# The data options train and fairfight share: one text for one meaning.
DATA_HELP = (
    "Built-in dataset (digits, breast-cancer, wine, mnist1d, diabetes, anes96) or a "
    "CSV/NPZ/IDX file."
)
label_option = click.option("--label", help="CSV column holding the labels (CSV data only).")


def task_option(default: str | None, help: str):
    """``--task``: the label's kind, one vocabulary for every command that takes data."""
    from cr_edge.task_metrics import TASKS

    return click.option(
        "--task", type=click.Choice(TASKS), default=default, show_default=default, help=help
    )


# Flags renamed so that one spelling means one thing in every command, kept for one
# release as hidden spellings that print a one-line deprecation: command -> old -> new.
RENAMED: dict[str, dict[str, tuple[str, ...]]] = {
    "quantize": {"--ort": ("--format", "onnx,ort"), "--poly": ("--chain-precision",)},
    "validate": {"--force": ("--accept-failed-export",)},
    "train": {"--dreg": ("--dreg-lambda",)},
}


def renamed(command: str, args: list[str]) -> tuple[list[str], list[str]]:
    """``args`` with old spellings of ``command``'s flags rewritten, and a warning for each."""
    table = RENAMED.get(command, {})
    out: list[str] = []
    warnings: list[str] = []
    for arg in args:
        old, eq, value = arg.partition("=")
        if old in table:
            new = table[old]
            warnings.append(f"warning: cr-edge {command} {old} is deprecated; use {' '.join(new)}")
            out.extend([f"{new[0]}={value}", *new[1:]] if eq else new)
        else:
            out.append(arg)
    return out, warnings
