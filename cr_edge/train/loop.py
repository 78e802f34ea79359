"""The training loop: the task's loss plus DREG, early stopping on a validation score.

The score is the task's selection metric (``cr_edge.task_metrics.SELECTION_METRIC``):
accuracy to classify, R² to regress, quadratic-weighted kappa for ordinal targets.

Deterministic by construction: one seed drives weight initialisation and batch
order, and deterministic algorithms are requested, so the same recipe on the
same machine writes a bit-identical checkpoint.
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from cr_edge import dreg, heads
from cr_edge.artifacts.folder_lock import holds_out
from cr_edge.checkpoint import save_checkpoint
from cr_edge.data import (
    Dataset,
    Normalisation,
    TargetScale,
    fit_normalisation,
    load_source,
    split,
    subsample_train,
)
from cr_edge.errors import InputError, NonFiniteError, TrainingFailed
from cr_edge.nets import CONV_RANKS, CRNet, NetConfig, build_net
from cr_edge.poly import PolyAct
from cr_edge.recipe import Recipe
from cr_edge.task_metrics import SELECTION_METRIC, task_metrics
from cr_edge.train.ranks import Rank, ddp_forward
from cr_edge.train.watch import FIX_DIVERGED, Watch, prediction_information, prior_entropy

CALIB_SAMPLES = 512  # training inputs kept for calibration and parity oracles
TEXT_TEST_SAMPLES = 2000  # text: test texts kept in calib.npz (accuracy checks downstream)
# Below this many parameters a CPU step is a few small kernels: a second intra-op thread
# only adds synchronisation, and on a busy machine its spin-waits cost several times the
# step itself (digits, width 16: 22 s on one thread, 129 s on two, under load).
SINGLE_THREAD_BELOW = 1_000_000
# A cosine schedule's last step, as a share of the peak rate: small enough to settle, not 0 so
# that the final epochs still move the weights the early-stopping rule is watching.
COSINE_FLOOR = 0.01


@dataclass(frozen=True)
class EpochStats:
    epoch: int
    loss: float
    dreg: float
    val_score: float  # the task's selection metric on the validation split
    val_metric: str = "accuracy"


@dataclass(frozen=True)
class Fit:
    """What ``_fit`` hands back: the best weights, and when they were found."""

    state: dict[str, Tensor]
    best_epoch: int  # the epoch whose validation score was best (1-based)
    epochs: int  # epochs trained before early stopping or the budget ended the run


@dataclass(frozen=True)
class TrainResult:
    checkpoint: Path
    metrics: dict
    net: CRNet
    notes: list[str] = field(default_factory=list)  # what the data loader noticed


def resolve_device(device: str) -> torch.device:
    """``auto`` picks CUDA when present; asking for CUDA without it is an input error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda: no CUDA device is visible; use --device cpu or auto")
    if device not in ("cpu", "cuda"):
        raise InputError(f"--device {device!r}: choose auto, cpu or cuda")
    return torch.device(device)


def net_config_for(recipe: Recipe, data: Dataset) -> NetConfig:
    input_shape = data.input_shape
    if data.is_text and recipe.arch == "conv":
        raise InputError(f"--arch conv: {data.source} is text; text nets are embedding + MLP")
    if recipe.arch == "text" and not data.is_text:
        raise InputError(
            f"recipe field 'arch' is 'text' but {data.source} holds numbers; "
            "name the CSV's text column with --text-column"
        )
    if recipe.arch == "conv" and len(input_shape) not in CONV_RANKS:
        raise InputError(
            "--arch conv needs sequences shaped (channels, length) or images (channels, h, w); "
            f"{data.source} has samples shaped {input_shape}; use --arch mlp"
        )
    if recipe.task == "regress" and not data.is_regression:
        raise InputError(f"--task regress: {data.source} has class labels, not numeric targets")
    return NetConfig(
        arch="text" if data.is_text else recipe.arch,
        input_shape=input_shape,
        n_classes=1 if recipe.task == "regress" else data.n_classes,
        task=recipe.task,
        vocab=recipe.buckets + 1 if data.is_text else 0,
        embed_dim=recipe.embed_dim if data.is_text else 0,
        hidden=recipe.hidden,
        activation=recipe.activation,
        degree=recipe.degree,
        shared=recipe.shared,
        poly_form=recipe.poly_form,
        dreg_positions=recipe.dreg_positions,
    )


@contextlib.contextmanager
def _cpu_threads(n: int | None) -> Iterator[None]:
    """Use ``n`` intra-op threads inside the block and restore the caller's setting after."""
    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def train_unlocked(
    recipe: Recipe,
    out: Path,
    device: str = "cpu",
    on_epoch: Callable[[EpochStats], None] | None = None,
    threads: int | None = None,
    on_step: Callable[[CRNet], None] | None = None,
    rank: Rank | None = None,
    on_batch: Callable[[CRNet, Tensor, Tensor], None] | None = None,
) -> TrainResult:
    """Train ``recipe`` and write the checkpoint folder ``out`` (``train`` holds its lock).

    ``threads=None`` picks one CPU thread for small nets (``SINGLE_THREAD_BELOW``) and
    torch's default otherwise; the caller's thread setting is restored afterwards.
    ``on_step`` sees the net after every optimiser step, its gradients still in place;
    ``on_batch`` sees the net and the step's batch (inputs, targets) before the step.
    ``rank``: one process of a distributed run (``cr_edge.train.distributed``, whose launcher
    holds the lock and calls this unlocked): it trains its shard under
    DistributedDataParallel, and only rank 0 writes the checkpoint.
    """
    dev = resolve_device(device)
    torch.manual_seed(recipe.seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    tokenizer = recipe.tokenizer()
    raw = load_source(
        recipe.data, recipe.label, recipe.task, recipe.text_column, recipe.data_format, tokenizer
    )
    # Text ids are reordered in place (no second copy of a large corpus); raw is not reused.
    text = raw.x.dtype.kind in "iu"
    data = split(raw, recipe.seed, recipe.val_fraction, recipe.test_fraction, in_place=text)
    data = subsample_train(data, recipe.train_fraction, recipe.seed)
    notes = list(raw.notes)
    del raw  # the splits are copies (or, for text, views): raw's own arrays can go
    # Token ids are not standardised: the embedding is the input layer.
    norm = (
        None
        if data.is_text
        else fit_normalisation(data.x_train, "channel" if recipe.arch == "conv" else "feature")
    )
    target_scale = TargetScale.fit(data.y_train) if recipe.task == "regress" else None
    tensors = {k: _inputs(getattr(data, f"x_{k}"), norm, dev) for k in ("train", "val", "test")}
    labels = {k: _targets(getattr(data, f"y_{k}"), target_scale, dev) for k in tensors}
    net = build_net(net_config_for(recipe, data), seed=recipe.seed).to(dev)
    if threads is None and dev.type == "cpu" and net.n_parameters() < SINGLE_THREAD_BELOW:
        threads = 1
    with _cpu_threads(threads):
        fit = _fit(net, recipe, tensors, labels, on_epoch, target_scale, on_step, rank, on_batch)
    net.load_state_dict(fit.state)
    net.eval()
    metrics = evaluate(net, tensors["test"], labels["test"], recipe.dreg_lambda, target_scale)
    val = score(net, tensors["val"], labels["val"], target_scale)
    metrics.update({f"val_{k}": v for k, v in val.items()})
    metrics.update({"best_epoch": fit.best_epoch, "epochs_trained": fit.epochs})
    if rank is not None and rank.rank != 0:
        return TrainResult(Path(out), metrics, net, notes)  # rank 0 writes the one checkpoint
    calib = calib_arrays(data, recipe.seed)
    save_checkpoint(
        out,
        net.cpu(),
        recipe,
        norm,
        data.label_names,
        metrics,
        calib,
        target_scale,
        tokenizer if data.is_text else None,
    )
    return TrainResult(Path(out), metrics, net, notes)


# The entry point: the same function, holding the output folder's lock while it writes.
train = holds_out("train")(train_unlocked)


def _inputs(x: np.ndarray, norm: Normalisation | None, dev: torch.device) -> Tensor:
    """Standardised float32 features, or token ids (int32 as loaded: half int64's memory)."""
    if norm is None:
        return torch.from_numpy(x).to(dev)
    return torch.from_numpy(norm.apply(x)).to(dev)


def _targets(y: np.ndarray, target_scale: TargetScale | None, dev: torch.device) -> Tensor:
    """Class indices as int64, or regression targets standardised with ``target_scale``."""
    if target_scale is None:
        return torch.from_numpy(y).long().to(dev)
    return torch.from_numpy(target_scale.apply(y)).to(dev)


def _fit(
    net: CRNet,
    recipe: Recipe,
    x: dict[str, Tensor],
    y: dict[str, Tensor],
    on_epoch: Callable[[EpochStats], None] | None,
    target_scale: TargetScale | None = None,
    on_step: Callable[[CRNet], None] | None = None,
    rank: Rank | None = None,
    on_batch: Callable[[CRNet, Tensor, Tensor], None] | None = None,
) -> Fit:
    task = net.config.task
    forward = net.forward_with_terms if rank is None else ddp_forward(net)
    metric = SELECTION_METRIC[task]
    kind = heads.default_loss(task) if recipe.loss == "auto" else recipe.loss
    opt_cls = torch.optim.AdamW if recipe.optimizer == "adamw" else torch.optim.Adam
    opt = opt_cls(net.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    gen = torch.Generator().manual_seed(recipe.seed)
    n = x["train"].shape[0]
    watch = Watch(
        initial_dreg=dreg_term(net, x["train"]),
        prior_entropy=_prior_loss(task, y["val"], net.config.n_classes),
        fit_range=net.config.fit_range,
    )
    best_score, best_state, stale, step = -np.inf, copy.deepcopy(net.state_dict()), 0, 0
    best_epoch = epoch = 0
    total = recipe.epochs * steps_per_epoch(n, recipe.batch_size, rank)
    for epoch in range(1, recipe.epochs + 1):
        net.train()
        loss_sum = term_sum = 0.0
        seen = 0  # n in one process; this rank's shard in a distributed run
        for idx in _batches(n, recipe, gen, epoch, rank, x["train"].device):
            set_lr(opt, scheduled_lr(recipe.lr, recipe.lr_schedule, step, total))
            if on_batch:
                on_batch(net, x["train"][idx], y["train"][idx])
            try:
                loss, term = _step(
                    net,
                    opt,
                    x["train"][idx],
                    y["train"][idx],
                    recipe.dreg_lambda,
                    step,
                    recipe.clip_grad,
                    recipe.range_penalty,
                    kind,
                    forward,
                )
            except NonFiniteError as e:
                raise TrainingFailed(
                    f"training diverged: {e}. Fix: {FIX_DIVERGED}. No checkpoint was written."
                ) from e
            loss_sum += loss * idx.numel()
            term_sum += term * idx.numel()
            seen += idx.numel()
            step += 1
            if on_step:
                on_step(net)
        val_score = score(net, x["val"], y["val"], target_scale)[metric]
        if rank is not None:  # every rank stops at the same epoch: rank 0's score decides
            val_score = rank.from_rank0(val_score)
        info = _information(net, x["val"])
        if on_epoch:
            dreg_mean = recipe.dreg_lambda * term_sum / seen
            on_epoch(EpochStats(epoch, loss_sum / seen, dreg_mean, val_score, metric))
        watch.check_epoch(epoch, loss_sum / seen, term_sum / seen, info, _coefficients(net))
        if val_score > best_score:
            best_score, best_state, stale = val_score, copy.deepcopy(net.state_dict()), 0
            best_epoch = epoch
        else:
            stale += 1
            if stale >= recipe.patience:
                break
    return Fit(best_state, best_epoch, epoch)


def steps_per_epoch(n: int, batch_size: int, rank: Rank | None = None) -> int:
    """Optimiser steps in one epoch of ``n`` samples (one rank's shard, when distributed)."""
    if rank is None:
        return math.ceil(n / batch_size)
    return math.ceil(math.ceil(n / rank.world) / max(1, batch_size // rank.world))


def scheduled_lr(lr: float, schedule: str, step: int, total: int) -> float:
    """The learning rate of optimiser step ``step`` (0-based) of ``total``.

    ``cosine`` falls from ``lr`` to ``lr * COSINE_FLOOR`` over the whole budget: the last
    epochs take small steps, so a run that has not stopped early still ends converged rather
    than wherever a constant step left it. ``constant`` is the rate every step.
    """
    if schedule == "constant" or total <= 1:
        return lr
    t = min(step, total - 1) / (total - 1)
    return lr * (COSINE_FLOOR + (1 - COSINE_FLOOR) * 0.5 * (1 + math.cos(math.pi * t)))


def set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    for group in opt.param_groups:
        group["lr"] = lr


def _batches(
    n: int,
    recipe: Recipe,
    gen: torch.Generator,
    epoch: int,
    rank: Rank | None,
    device: torch.device,
) -> Iterator[Tensor]:
    """One epoch's mini-batches of training indices: a seeded permutation, or this rank's
    ``DistributedSampler`` shard in batches of ``batch_size / world`` (the same global batch,
    so the same learning rate applies; every rank takes the same number of steps)."""
    if rank is None:
        order = torch.randperm(n, generator=gen).to(device)
        size = recipe.batch_size
    else:
        order = torch.tensor(rank.shard(n, recipe.seed, epoch), device=device)
        size = max(1, recipe.batch_size // rank.world)
    for start in range(0, len(order), size):
        yield order[start : start + size]


def _step(
    net: CRNet,
    opt: torch.optim.Optimizer,
    xb: Tensor,
    yb: Tensor,
    dreg_lambda: float,
    step: int,
    clip: float = 0.0,
    bound: float = 0.0,
    kind: str = "cross-entropy",
    forward: Callable | None = None,
) -> tuple[float, float]:
    """One optimiser step; returns the task's loss (``kind``) and the unweighted DREG term.

    ``clip`` is the gradient-norm limit and ``bound`` the weight of the range penalty
    (``Recipe.clip_grad``, ``Recipe.range_penalty``); 0 turns either off. ``forward`` is
    ``net.forward_with_terms``, or its DistributedDataParallel wrapper (gradients averaged
    over the ranks in the backward pass).
    """
    logits, terms, excess = (forward or net.forward_with_terms)(xb)
    term = dreg.penalty(terms, 1.0)
    penalty = dreg_lambda * term if dreg_lambda > 0 else torch.zeros((), device=xb.device)
    ce = heads.loss(net.config.task, kind, logits, yb)
    loss = ce + penalty
    if bound > 0 and excess:
        loss = loss + bound * torch.stack(excess).sum()
    if not torch.isfinite(loss):
        name = "DREG penalty" if not torch.isfinite(penalty) else f"{kind} loss"
        raise NonFiniteError(
            f"training step {step}: the {name} is {loss.item()}; "
            "lower --lr or --dreg, or check the data for extreme values"
        )
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if clip > 0:
        torch.nn.utils.clip_grad_norm_(net.parameters(), clip)
    _scaled_step(net, opt)
    for name, p in net.named_parameters():
        if not torch.isfinite(p).all():
            raise NonFiniteError(
                f"training step {step}: parameter {name!r} became non-finite; lower --lr"
            )
    return ce.item(), term.item()


def _scaled_step(net: CRNet, opt: torch.optim.Optimizer) -> None:
    """``opt.step()``, with coefficient ``a_k`` of every polynomial moved ``fit_range**-k`` as far.

    Adam moves every parameter by about ``lr`` a step whatever its gradient, but ``a_k``
    changes ``p`` by ``|z|**k`` on the fit interval: at degree 8 and ``|z| = 3`` the top
    coefficient moved the output 6561 times as far as the constant did, and digits with
    ``--degree 5 --hidden 32,32`` diverged in its first epoch. Scaling each row's update is
    exactly a per-power learning rate ``lr / R**k`` (Adam's and AdamW's updates, weight
    decay included, are elementwise and linear in ``lr``), the same as training the
    polynomial in ``z / R``, where every coefficient moves ``p`` alike. A depressed
    polynomial's rows are its ``powers``; its shift moves ``p`` by ``p'`` times the step,
    about as far as the constant does, and keeps Adam's step.
    """
    polys = [b for b in net.blocks if isinstance(b, PolyAct)]
    before = [b.coeffs.detach().clone() for b in polys]
    opt.step()
    with torch.no_grad():
        for b, old in zip(polys, before, strict=True):
            c = b.coeffs
            k = torch.tensor(b.powers, dtype=c.dtype, device=c.device).view(-1, 1)
            c.copy_(old + (c - old) / net.config.fit_range**k)


@torch.no_grad()
def dreg_term(net: CRNet, x: Tensor) -> float:
    """The unweighted DREG term ``sum_layers mean_batch ||J||_F^2`` of ``net`` on ``x``."""
    net.eval()
    _, terms = net.forward_with_jacobians(x)
    return float(sum(t.mean().item() for t in terms))


@torch.no_grad()
def _information(net: CRNet, x: Tensor) -> float:
    """How much the predicted class distribution depends on the input (for collapse).

    Ordinal heads give it through their class probabilities; a regression has no class
    distribution and is not watched for collapse (``inf``).
    """
    net.eval()
    out = net(x).double()
    if net.config.task == "regress":
        return float("inf")
    if net.config.task == "ordinal":
        probs, _ = heads.ordinal_outputs(out)
        out = probs.clamp(min=1e-300).log()
    return prediction_information(out.cpu().numpy())


def _prior_loss(task: str, y: Tensor, n_classes: int) -> float:
    """What a constant net scores: the class entropy, or 1 (the MSE of predicting the mean
    of a standardised target)."""
    if task == "regress":
        return 1.0
    return prior_entropy(y.cpu().numpy(), n_classes)


def _coefficients(net: CRNet) -> list[np.ndarray]:
    return [b.monomial() for b in net.blocks if isinstance(b, PolyAct)]


@torch.no_grad()
def accuracy(net: CRNet, x: Tensor, y: Tensor) -> float:
    net.eval()
    return (heads.predictions(net.config.task, net(x)) == y).float().mean().item()


@torch.no_grad()
def score(
    net: CRNet, x: Tensor, y: Tensor, target_scale: TargetScale | None = None
) -> dict[str, float]:
    """The task's metrics on one split; regression errors in the target's own units."""
    net.eval()
    pred = heads.predictions(net.config.task, net(x)).cpu().numpy()
    target = y.cpu().numpy()
    if target_scale is not None:
        pred, target = target_scale.undo(pred), target_scale.undo(target)
    return task_metrics(net.config.task, pred, target, net.config.n_classes)


def evaluate(
    net: CRNet,
    x: Tensor,
    y: Tensor,
    dreg_lambda: float = dreg.DEFAULT_LAMBDA,
    target_scale: TargetScale | None = None,
) -> dict:
    """Test metrics of a trained net: the task's metrics, size, DREG term, gradient metrics."""
    net.eval()
    if net.config.arch == "text":  # ids are discrete: gradients w.r.t. the pooled embedding
        with torch.no_grad():
            pooled = net.blocks[0](x)
        norms = dreg.input_gradient_norms(nn.Sequential(*net.blocks[1:]), pooled)
    else:
        norms = dreg.input_gradient_norms(net, x)
    test = score(net, x, y, target_scale)
    return {
        **{f"test_{k}": v for k, v in test.items()},
        "parameters": net.n_parameters(),
        "dreg_term": dreg_term(net, x),
        "dreg_lambda": dreg_lambda,
        **dreg.gradient_metrics(norms),
    }


def calib_arrays(data: Dataset, seed: int) -> dict[str, np.ndarray]:
    """Raw (un-normalised) inputs for calibration, plus the test split for accuracy checks."""
    rng = np.random.default_rng(seed)
    take = min(CALIB_SAMPLES, data.x_train.shape[0])
    idx = np.sort(rng.choice(data.x_train.shape[0], size=take, replace=False))
    # Regression keeps its test targets as ``t_test``: ``y_test`` means class labels to
    # the readers of calib.npz and the oracle (accuracy in quantize and validate).
    # Text keeps its ids as int64 (what the exported graph takes), and at most
    # TEXT_TEST_SAMPLES of its test split: Yelp's would be 100k texts x max_len ids.
    kind, test = (np.int64, slice(TEXT_TEST_SAMPLES)) if data.is_text else (np.float32, slice(None))
    targets = (
        {"t_test": data.y_test.astype(np.float32)}
        if data.is_regression
        else {"y_test": data.y_test[test].astype(np.int64)}
    )
    return {"x": data.x_train[idx].astype(kind), "x_test": data.x_test[test].astype(kind)} | targets
