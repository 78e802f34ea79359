"""What a check returns: a status, the figures behind it, and every comparison it made.

Plain data so that a report is easy to print, serialise and assert on: parity and
coverage both return an ``Outcome``; ``validate`` collects them into a table.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from cr_edge.artifacts.atomic import json_safe

PASS, FAIL, UNAVAILABLE = "PASS", "FAIL", "UNAVAILABLE"
# How derivatives are checked; named here, beside the results, so the CLI reads them light.
COMPANION, FINITE_DIFFERENCES = "companion", "finite-differences"
COMPANION_Y = "companion's own y"  # judged at the output tolerance, reported apart from jvp
DERIVATIVE_METHODS = ("auto", COMPANION, FINITE_DIFFERENCES)


@dataclass(frozen=True)
class Check:
    """One comparison against the oracle: one output, or one derivative."""

    name: str
    shape: tuple[int, ...]
    passed: bool
    tolerance: str
    max_abs: float = math.nan
    max_rel: float = math.nan
    min_cosine: float | None = None
    error: str = ""  # why the comparison could not be made (run error, shape mismatch)

    def describe(self) -> str:
        """One line: name, shape, the figures and the tolerance they were held to."""
        head = f"{self.name} {tuple(self.shape)}"
        if self.error:
            return f"{head}: {self.error}"
        cos = "" if self.min_cosine is None else f", min cosine {self.min_cosine:.6f}"
        return (
            f"{head}: max abs err {self.max_abs:.3g}, max rel err {self.max_rel:.3g}{cos}; "
            f"tolerance {self.tolerance}"
        )


@dataclass(frozen=True)
class Outcome:
    """The result of one column (outputs, derivatives or coverage) for one runtime."""

    status: str
    summary: str  # one line for the table: the headline figures, or the reason
    checks: list[Check] = field(default_factory=list)
    figures: dict = field(default_factory=dict)

    @classmethod
    def unavailable(cls, reason: str) -> Outcome:
        return cls(UNAVAILABLE, reason)

    @classmethod
    def from_checks(cls, checks: list[Check], summary: str, figures: dict | None = None) -> Outcome:
        status = PASS if all(c.passed for c in checks) else FAIL
        return cls(status, summary, checks, figures or {})

    def to_json(self) -> dict:
        return json_safe(asdict(self))
