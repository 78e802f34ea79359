"""Metrics of each task in plain numpy, so training, the fair fight and reports share them.

``classify`` reports accuracy; ``regress`` MAE, RMSE and R²; ``ordinal`` accuracy, MAE
in ranks and quadratic-weighted kappa (QWK), the agreement statistic ordinal benchmarks
quote because it charges a two-rank miss four times a one-rank miss.
"""

from __future__ import annotations

import numpy as np

TASKS = ("classify", "regress", "ordinal")
# The validation figure early stopping maximises, per task.
SELECTION_METRIC = {"classify": "accuracy", "regress": "r2", "ordinal": "qwk"}


def accuracy(pred: np.ndarray, target: np.ndarray) -> float:
    return float(np.mean(np.asarray(pred) == np.asarray(target)))


def mae(pred: np.ndarray, target: np.ndarray) -> float:
    return float(np.mean(np.abs(np.asarray(pred, np.float64) - np.asarray(target, np.float64))))


def rmse(pred: np.ndarray, target: np.ndarray) -> float:
    diff = np.asarray(pred, np.float64) - np.asarray(target, np.float64)
    return float(np.sqrt(np.mean(diff * diff)))


def r2(pred: np.ndarray, target: np.ndarray) -> float:
    """1 - SS_res / SS_tot; 0 for predicting the mean, negative when worse than that."""
    t = np.asarray(target, np.float64)
    res = np.sum((t - np.asarray(pred, np.float64)) ** 2)
    tot = np.sum((t - t.mean()) ** 2)
    return float(1.0 - res / tot) if tot > 0 else 0.0


def quadratic_weighted_kappa(pred: np.ndarray, target: np.ndarray, n_classes: int) -> float:
    """Cohen's kappa with weights ``(i - j)^2 / (K - 1)^2`` (1 is perfect agreement, 0 chance)."""
    p, t = np.asarray(pred, np.int64), np.asarray(target, np.int64)
    observed = np.zeros((n_classes, n_classes))
    np.add.at(observed, (t, p), 1.0)
    expected = np.outer(observed.sum(axis=1), observed.sum(axis=0)) / max(len(t), 1)
    i, j = np.indices((n_classes, n_classes))
    weights = (i - j) ** 2 / max(n_classes - 1, 1) ** 2
    denom = float(np.sum(weights * expected))
    return 1.0 - float(np.sum(weights * observed)) / denom if denom > 0 else 0.0


def task_metrics(task: str, pred: np.ndarray, target: np.ndarray, n_classes: int) -> dict:
    """The task's metrics of predictions (class indices, or values for ``regress``)."""
    if task == "regress":
        return {"mae": mae(pred, target), "rmse": rmse(pred, target), "r2": r2(pred, target)}
    metrics = {"accuracy": accuracy(pred, target)}
    if task == "ordinal":
        metrics["mae"] = mae(pred, target)
        metrics["qwk"] = quadratic_weighted_kappa(pred, target, n_classes)
    return metrics
