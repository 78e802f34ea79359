"""The figure a fight compares nets on, one per task, and which way is better.

Classification and ordinal regression compare test accuracy (of the ordinal head's
rank, for ``ordinal``); regression compares MAE in the target's units, where lower is
better. The verdict reads every figure through ``score`` (higher is better for every
task), so one code path decides all three.
"""

from __future__ import annotations

from dataclasses import dataclass

from cr_edge.errors import InputError
from cr_edge.task_metrics import TASKS


@dataclass(frozen=True)
class Metric:
    key: str  # the training metrics' name: records hold ``val_<key>`` and ``test_<key>``
    name: str  # what the report calls it
    higher_is_better: bool
    margin: float  # equal-metric slack: absolute points, or a share of the best value
    relative: bool = False

    def score(self, value: float) -> float:
        """``value`` oriented so that higher is better."""
        return value if self.higher_is_better else -value

    def slack(self, best: float) -> float:
        """How far (in score units) a net may trail ``best`` and still count as equal."""
        return self.margin * abs(best) if self.relative else self.margin

    def slack_text(self) -> str:
        return f"{self.margin:.0%}" if self.relative else f"{self.margin * 100:g} points"


METRICS = {
    "classify": Metric("accuracy", "accuracy", True, 0.005),
    "ordinal": Metric("accuracy", "ordinal accuracy", True, 0.005),
    "regress": Metric("mae", "MAE", False, 0.01, relative=True),
}
ACCURACY = METRICS["classify"]


def metric_for(task: str) -> Metric:
    if task not in TASKS:
        raise InputError(f"--task {task!r}: choose {', '.join(TASKS)}")
    return METRICS[task]
