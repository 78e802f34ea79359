"""What kind of target a label column holds: classes, a quantity, or ranks.

Encoding every distinct value as a class turns a price into 600 classes that the
test split never sees again (accuracy 0) and star ratings into five unordered classes.
Loaders ask ``target_kind`` first and refuse or annotate. numpy-only, torch-free, so
every loader and the task selection can share it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from cr_edge.errors import InputError

CLASSIFY, REGRESS, ORDINAL_LOOKING = "classify", "regress", "ordinal-looking"
# Integer targets: more distinct values than this, with fewer than MIN_PER_VALUE samples
# each on average, are a count or an amount, not classes (a 100-class set keeps hundreds of
# samples per class; 600 distinct prices in 600 rows keep one).
MAX_SPARSE_CLASSES = 20
MIN_PER_VALUE = 10
ORDINAL_SIZES = range(3, 11)  # 1..K with K in 3..10 reads as ratings or grades


@dataclass(frozen=True)
class TargetKind:
    """``kind`` is CLASSIFY, REGRESS or ORDINAL_LOOKING; ``why`` is the evidence, for messages."""

    kind: str
    why: str = ""


def target_kind(values: Sequence[str] | np.ndarray) -> TargetKind:
    """Classify a target column from its values (label strings or a numeric array)."""
    numbers = _as_numbers(values)
    if numbers is None or numbers.size == 0 or not np.isfinite(numbers).all():
        return TargetKind(CLASSIFY)
    fractional = numbers != np.round(numbers)
    if fractional.any():
        example = numbers[np.argmax(fractional)]
        return TargetKind(REGRESS, f"non-integer values such as {example:g}")
    distinct = np.unique(numbers)
    if len(distinct) > MAX_SPARSE_CLASSES and numbers.size < MIN_PER_VALUE * len(distinct):
        return TargetKind(
            REGRESS, f"{len(distinct)} distinct integer values in {numbers.size} samples"
        )
    k = len(distinct)
    if k in ORDINAL_SIZES and np.array_equal(distinct, np.arange(1, k + 1)):
        return TargetKind(ORDINAL_LOOKING, f"the integers 1..{k}, which may be ranks")
    return TargetKind(CLASSIFY)


def check_classes(values: Sequence[str] | np.ndarray, where: str) -> tuple[str, ...]:
    """Refuse a regression target as classes (``InputError``); return notes for the user.

    ``where`` names the file and column in the message.
    """
    kind = target_kind(values)
    if kind.kind == REGRESS:
        raise InputError(
            f"{where}: looks like a regression target ({kind.why}); "
            "train it with --task regress, not as classes"
        )
    if kind.kind == ORDINAL_LOOKING:
        return (
            f"{where}: the labels are {kind.why}; they are trained as unordered classes "
            "(--task ordinal keeps their order)",
        )
    return ()


def _as_numbers(values: Sequence[str] | np.ndarray) -> np.ndarray | None:
    arr = np.asarray(values)
    if arr.dtype.kind == "b":
        return None
    if arr.dtype.kind in "iuf":
        return arr.astype(np.float64).reshape(-1)
    try:
        return np.array([float(v) for v in arr.reshape(-1)], dtype=np.float64)
    except ValueError:
        return None
