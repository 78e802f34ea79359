"""``cr-edge fairfight``: the whole ladder, then the report."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import numpy as np

from cr_edge.fairfight.ladder import ladder
from cr_edge.fairfight.report import write_report
from cr_edge.fairfight.runner import run_entry
from cr_edge.folder_lock import holds_out


@holds_out("fairfight")
def fairfight(
    data: str,
    budget: str,
    out: Path,
    label: str | None = None,
    on_entry: Callable[[str, int, int], None] | None = None,
) -> dict:
    """Train, export, quantize and profile every ladder entry, then write the report."""
    specs = ladder(data, budget, label)
    records, norms = [], defaultdict(list)
    for i, spec in enumerate(specs):
        if on_entry:
            on_entry(spec.name, i, len(specs))
        outcome = run_entry(spec, Path(out) / "runs")
        records.append(outcome.record)
        norms[spec.family.name].append(outcome.grad_norms)
    pooled = {family: np.concatenate(parts) for family, parts in norms.items()}
    return write_report(data, budget, records, pooled, Path(out))
