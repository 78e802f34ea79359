"""One Fair Fight task end to end: train, then measure the columns the papers claim.

``run_task`` takes and returns plain dicts, so the same function runs inline, in a
local process pool or on a Ray worker, and writes nothing outside a temporary
folder: on a cluster, workers share no disk with the driver. It runs on one CPU
thread, which makes its record a function of the task alone.

``latency_at_equal_accuracy`` retrains the two nets the verdict names, exports them
(ONNX and ExecuTorch) and profiles them interleaved on this machine.
"""

from __future__ import annotations

import dataclasses
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cr_edge import dreg, heads
from cr_edge.checkpoint import load_checkpoint
from cr_edge.data.normalise import Normalisation, TargetScale
from cr_edge.errors import TrainingFailed
from cr_edge.export.exporter import ExportOptions, export
from cr_edge.fairfight import smoothness
from cr_edge.fairfight.ladder import Task
from cr_edge.fairfight.metric import METRICS
from cr_edge.fairfight.smoothness import StepProbe
from cr_edge.fairfight.stats import undefined_as_none
from cr_edge.nets import CRNet
from cr_edge.profile.profiler import ProfileOptions, profile
from cr_edge.task_metrics import task_metrics
from cr_edge.train.loop import train

# Additive Gaussian noise with sigma = level x the training inputs' std (all values pooled).
NOISE_LEVELS = (0.1, 0.25, 0.5)
# Structured corruption: every sample moved by +-SHIFT_SHARE of each spatial axis (at least one
# step, edges replicated): 1 pixel on 8x8 digits, 4 steps on MNIST-1D's length-40 signals.
SHIFT_SHARE = 0.1
PROFILE_BATCHES = (1, 64)
PROFILE_RUNTIMES = (("cpu", "onnx"), ("executorch-xnnpack", "pte"))
# A run whose best validation epoch fell in this last share of its epoch budget may still have
# been improving when the budget ended it: the report counts and flags it (``late_best``).
LATE_SHARE = 0.1


def run_task(task_json: dict) -> dict:
    """Train ``task_json`` (``Task.to_json()``) and return its record."""
    task = Task.from_json(task_json)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        step_norms: list[float] = []
        kind = task.recipe.loss
        probe = StepProbe(
            task.recipe.task, heads.default_loss(task.recipe.task) if kind == "auto" else kind
        )
        with tempfile.TemporaryDirectory(prefix="cr-edge-fight-") as tmp:
            try:
                result = train(
                    task.recipe,
                    Path(tmp) / "checkpoint",
                    device="cpu",
                    threads=1,
                    on_step=lambda net: step_norms.append(_parameter_grad_norm(net)),
                    on_batch=probe,
                )
            except TrainingFailed as e:
                # a diverged or collapsed run is a result too: counted in the report, never chosen
                return {**_identity(task), "failed": str(e)}
            ckpt = load_checkpoint(result.checkpoint)
            calib = ckpt.calib()
        m = result.metrics
        k = METRICS[task.recipe.task].key
        trained = Trained(
            net=result.net.eval(),
            normalisation=ckpt.normalisation,
            calib=calib,
            scores={f"val_{k}": m[f"val_{k}"], f"test_{k}": m[f"test_{k}"]},
            best_epoch=m["best_epoch"],
            epochs=m["epochs_trained"],
            step_readings=probe.metrics(),
            step_norms=step_norms,
            target_scale=ckpt.target_scale,
        )
        return measure(task, trained)
    finally:
        torch.set_num_threads(before)


@dataclass(frozen=True)
class Trained:
    """What a finished run hands to ``measure``, from ``train`` or from a stack."""

    net: CRNet
    normalisation: Normalisation
    calib: dict[str, np.ndarray]
    scores: dict[str, float]  # val_<metric> and test_<metric>
    best_epoch: int
    epochs: int
    step_readings: dict[str, float | None]  # StepProbe.metrics(): batch_* and step_*
    step_norms: list[float]  # every step's gradient norm over all parameters (after clipping)
    target_scale: TargetScale | None = None


def measure(task: Task, trained: Trained) -> dict:
    """A finished run's record: its scores, size, smoothness and (outside tuning) accuracy
    under corruption. One definition for single and stacked runs."""
    net, calib = trained.net, trained.calib
    x_test = torch.from_numpy(trained.normalisation.apply(calib["x_test"]))
    per_sample = dreg.input_gradient_norms(net, x_test).double().numpy()
    record = _identity(task) | {
        "parameters": net.n_parameters(),
        **trained.scores,
        # smoothness (cr_edge.fairfight.smoothness): per test sample, per training batch,
        # and per step over the shared weights without DREG; peak volatility is max/median
        "tail_ratio": smoothness.tail_ratio(per_sample),
        "peak_volatility": smoothness.peak_volatility(per_sample),
        "peak_gradient": float(per_sample.max()),  # the raw max, in the inputs' units
        "grad_mean": float(per_sample.mean()),
        **trained.step_readings,
        **smoothness.summary(
            "test_batch", smoothness.batch_means(per_sample, task.recipe.batch_size)
        ),
        "steps": len(trained.step_norms),
        "best_epoch": trained.best_epoch,
        "epochs": trained.epochs,
        "epoch_budget": task.recipe.epochs,
        "late_best": late_best(trained.best_epoch, task.recipe.epochs),
        # every parameter, the whole loss (DREG's term included): the old step metric
        "all_step_tail_ratio": smoothness.tail_ratio(trained.step_norms),
    }
    if task.phase != "tune":
        record["corruption"] = corruption_scores(
            net, trained.normalisation, calib, task.seed, trained.target_scale
        )
    return undefined_as_none(record)


def _identity(task: Task) -> dict:
    """What names a run in its record: the task's fields, before anything it measured."""
    return {
        "key": task.key,
        "phase": task.phase,
        "family": task.family,
        "arch": task.arch,
        "width": task.width,
        "seed": task.seed,
        "lr": task.lr,
        "dreg": task.dreg,
        "weight_decay": task.recipe.weight_decay,
        "fraction": task.fraction,
    }


def stackable(task: Task) -> bool:
    """Whether ``run_group`` can train ``task``: a classifier on numeric features
    (``stacked.check_stackable``), in any phase. Tuning stacks read validation scores and
    convergence only; the other phases' stacks are measured as single runs are
    (``measure``)."""
    return task.recipe.task == "classify" and task.recipe.arch != "text"


def run_group(task_jsons: list[dict]) -> list[dict]:
    """Train tasks of one shape together (``stacked.train_stacked``: seeds and settings of
    one family, architecture and width) and return one record per task, in order.

    A tuning stack's record carries what tuning reads (validation and test accuracy, best
    epoch, epochs, ``late_best``); any other phase's carries a single run's whole record
    (``measure``). Either has ``trainer: "stacked"``, and its key is the task's, as a
    single run's would be. One CPU thread, as ``run_task``."""
    from cr_edge.fairfight.stacked import train_stacked

    tasks = [Task.from_json(t) for t in task_jsons]
    full = any(t.phase != "tune" for t in tasks)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        runs = train_stacked(
            [t.recipe for t in tasks], probe_every=smoothness.SAMPLE_EVERY if full else None
        )
        out = []
        for task, run in zip(tasks, runs, strict=True):
            record = {**_identity(task), "trainer": "stacked"}
            if run.failed:
                out.append({**record, "failed": run.failed})
            elif run.net is not None:
                out.append({**measure(task, _trained(run)), "trainer": "stacked"})
            else:
                record |= {
                    "val_accuracy": run.val_accuracy,
                    "test_accuracy": run.test_accuracy,
                    "best_epoch": run.best_epoch,
                    "epochs": run.epochs,
                    "epoch_budget": task.recipe.epochs,
                    "late_best": late_best(run.best_epoch, task.recipe.epochs),
                }
                out.append(undefined_as_none(record))
        return out
    finally:
        torch.set_num_threads(before)


def _trained(run) -> Trained:
    """A stacked run (``stacked.StackedRun`` with ``probe_every``) as ``measure`` reads it."""
    probes = run.probes
    return Trained(
        net=run.net,
        normalisation=run.normalisation,
        calib=run.calib,
        scores={"val_accuracy": run.val_accuracy, "test_accuracy": run.test_accuracy},
        best_epoch=run.best_epoch,
        epochs=run.epochs,
        step_readings={
            **smoothness.summary("batch", probes.batch_norms),
            **smoothness.summary("step", probes.weight_norms),
        },
        step_norms=probes.all_norms,
    )


def late_best(best_epoch: int, budget: int) -> bool:
    """Whether ``best_epoch`` (1-based) lies in the last ``LATE_SHARE`` of ``budget`` epochs."""
    return best_epoch > budget * (1 - LATE_SHARE)


def _parameter_grad_norm(net: CRNet) -> float:
    """``||d loss / d theta||`` of one training step, over every parameter."""
    norms = [p.grad.detach().norm() for p in net.parameters() if p.grad is not None]
    return float(torch.stack(norms).norm()) if norms else 0.0


def corruption_scores(
    net: CRNet,
    normalisation: Normalisation,
    calib: dict,
    seed: int,
    target_scale: TargetScale | None = None,
) -> dict[str, float]:
    """The task's fight metric (``metric.METRICS``) on the test split under each Gaussian
    noise level and under small shifts."""
    x = calib["x_test"]
    sigma = float(np.std(calib["x"]))
    rng = np.random.default_rng(seed)

    def measure(corrupted: np.ndarray) -> float:
        return _metric(net, normalisation.apply(corrupted), calib, target_scale)

    out = {}
    for level in NOISE_LEVELS:
        noisy = x + (level * sigma) * rng.standard_normal(x.shape).astype(np.float32)
        out[f"noise_{level:g}"] = measure(noisy)
    shifted = [measure(s) for s in shifts(x)]
    if shifted:
        out["shift"] = float(np.mean(shifted))
    return out


def shifts(x: np.ndarray) -> list[np.ndarray]:
    """``x`` (n, channels, *spatial) moved both ways along each spatial axis, edges replicated."""
    out = []
    for axis in range(2, x.ndim):
        k = max(1, round(SHIFT_SHARE * x.shape[axis]))
        for step in (k, -k):
            out.append(_shift(x, axis, step))
    return out


def _shift(x: np.ndarray, axis: int, step: int) -> np.ndarray:
    n = x.shape[axis]
    index = np.clip(np.arange(n) - step, 0, n - 1)  # out[i] = x[i - step]
    return np.take(x, index, axis=axis)


@torch.no_grad()
def _metric(
    net: CRNet, x: np.ndarray, calib: dict, target_scale: TargetScale | None = None
) -> float:
    """The fight metric of ``net`` on inputs ``x`` against the test targets (a regression's
    predictions in the target's own units, as its training metrics are)."""
    task = net.config.task
    out = net(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)))
    pred = heads.predictions(task, out).numpy()
    if task == "regress":
        pred, target = target_scale.undo(pred), calib["t_test"]
    else:
        target = calib["y_test"]
    return task_metrics(task, pred, target, net.config.n_classes)[METRICS[task].key]


def latency_at_equal_accuracy(base: Task, cr: Task, out: Path, iters: int) -> dict:
    """Both nets trained (seed as in the ladder), exported, and timed interleaved.

    One ``profile`` call per runtime measures baseline and CR in alternating rounds at
    each batch; the ratio is CR / baseline per round (median and p10-p90).
    """
    files = {}
    for role, task in (("baseline", base), ("cr", cr)):
        folder = out / role
        train(task.recipe, folder / "checkpoint", device="cpu")
        exported = export(
            folder / "checkpoint",
            folder / "export",
            ExportOptions(companion=False, formats=("onnx", "executorch")),
        )
        files[role] = exported.files
    rows = []
    options = ProfileOptions(batches=PROFILE_BATCHES, warmup=50, iters=iters, memory=False)
    for runtime, kind in PROFILE_RUNTIMES:
        paths = [files["baseline"][kind], files["cr"][kind]]
        report = profile(paths, dataclasses.replace(options, runtimes=runtime))
        p50 = {(r.batch, Path(r.file).parent.parent.name): r.latency["p50_ms"] for r in report.rows}
        for c in report.comparisons:
            rows.append(
                {
                    "runtime": runtime,
                    "batch": c["batch"],
                    "baseline_p50_us": p50[(c["batch"], "baseline")] * 1e3,
                    "cr_p50_us": p50[(c["batch"], "cr")] * 1e3,
                    "ratio": c["ratio"],
                    "p10": c["p10"],
                    "p90": c["p90"],
                }
            )
    return {"baseline": base.key, "cr": cr.key, "device": report.device, "rows": rows}
