"""Train many small nets of one shape at once: seeds and learning-rate trials as one batch.

A Fair Fight run is a small net on a small dataset: on a CPU one optimiser step is a few
dozen tiny kernels, and launching them costs more than their arithmetic. Nets of the same
shape (same data, architecture, width, batch size and epochs; any seed, learning rate,
lambda or weight decay) are trained here together: their weights are stacked along a new
leading axis (``torch.func.stack_module_state``), and one ``torch.func.vmap`` of
``functional_call`` runs every net's forward pass, DREG and range terms included, in the
kernels one net would launch. The optimiser (AdamW or Adam, with ``train``'s per-power
scaling of polynomial coefficient updates) is written out so that each net keeps its own
learning rate, schedule, weight decay, gradient clipping and early stopping.

Each net sees what ``cr-edge train`` would show it: its own seed's split, normalisation,
initial weights and batch order. What differs is floating-point summation order, so a
stacked run matches its single run within seed noise, not bit for bit
(``tests/test_stacked.py``). Classification only, on CPU or one device; no checkpoint is
written (the fight keeps records, not checkpoints), and ``train``'s collapse watch is not
run: a net whose loss turns non-finite is marked ``failed`` and stops, the others go on.

With ``probe_every`` the stack also takes the training-time smoothness readings a single
run's ``smoothness.StepProbe`` and ``on_step`` take (the same definitions, per net, in one
``vmap``), and each ``StackedRun`` carries its best net, normalisation and calibration
arrays: what the fight measures after training (``runner.measure``), so ladder and probe
runs can be stacked too.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass, fields, replace

import numpy as np
import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, stack_module_state, vmap

from cr_edge import dreg, heads
from cr_edge.data import Dataset, fit_normalisation, load_source, split, subsample_train
from cr_edge.data.normalise import Normalisation
from cr_edge.errors import InputError
from cr_edge.fairfight.smoothness import shared_weights
from cr_edge.nets import CRNet, build_net
from cr_edge.poly import PolyAct
from cr_edge.recipe import Recipe
from cr_edge.train.loop import calib_arrays, net_config_for, scheduled_lr

# What may differ between the recipes of one stack; every other field must match.
PER_NET = ("name", "seed", "lr", "dreg_lambda", "weight_decay")
BETAS, EPS = (0.9, 0.999), 1e-8  # torch.optim.AdamW's defaults, which train uses


@dataclass(frozen=True)
class StackedRun:
    """One net's outcome, as ``train``'s metrics name it."""

    recipe: Recipe
    val_accuracy: float
    test_accuracy: float
    best_epoch: int
    epochs: int
    failed: str | None = None  # why training stopped early for this net (non-finite loss)
    # with ``probe_every``: the net at its best epoch (eval mode), its input normalisation,
    # its calibration/test arrays (``train.loop.calib_arrays``) and the step readings
    net: CRNet | None = None
    normalisation: Normalisation | None = None
    calib: dict[str, np.ndarray] | None = None
    probes: Probes | None = None


@dataclass
class Probes:
    """One net's training-time readings, as ``smoothness.StepProbe`` and ``runner``'s
    ``on_step`` take them from a single run: every ``every``-th step (before the optimiser
    moves) the batch's mean input-gradient norm and the task loss's gradient norm over the
    shared weights; every step, the clipped gradient norm over all parameters."""

    batch_norms: list[float]
    weight_norms: list[float]
    all_norms: list[float]


class _WithTerms(nn.Module):
    """``forward`` is the net's ``forward_with_terms``: what ``functional_call`` calls."""

    def __init__(self, net: CRNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: Tensor) -> tuple[Tensor, list[Tensor], list[Tensor]]:
        return self.net.forward_with_terms(x)


def check_stackable(recipes: Sequence[Recipe]) -> None:
    """Refuse recipes that cannot share one stack, naming the first field that differs."""
    if not recipes:
        raise InputError("train_stacked: give at least one recipe")
    first = recipes[0]
    for r in recipes[1:]:
        for f in fields(Recipe):
            if f.name not in PER_NET and getattr(r, f.name) != getattr(first, f.name):
                raise InputError(
                    f"train_stacked: recipe field {f.name!r} differs ({getattr(first, f.name)!r} "
                    f"vs {getattr(r, f.name)!r}); only {', '.join(PER_NET)} may differ in a stack"
                )
    if first.task != "classify":
        raise InputError(f"train_stacked: task {first.task!r}; stacked training classifies only")
    if first.arch == "text":
        raise InputError("train_stacked: text nets are not stacked; train them one at a time")


def _data(
    recipes: Sequence[Recipe], dev: torch.device
) -> tuple[dict[str, tuple[Tensor, Tensor]], list[Dataset], list[Normalisation]]:
    """Each net's splits (its own seed's), stacked: ``{split: (x (M, n, ...), y (M, n))}``,
    the datasets they came from (for each net's input shape and classes) and each net's
    normalisation."""
    r0 = recipes[0]
    raw = load_source(r0.data, r0.label, r0.task, r0.text_column, r0.data_format)
    per = "channel" if r0.arch == "conv" else "feature"
    parts: dict[str, tuple[list, list]] = {k: ([], []) for k in ("train", "val", "test")}
    datasets, norms = [], []
    for r in recipes:
        d = split(raw, r.seed, r.val_fraction, r.test_fraction)
        d = subsample_train(d, r.train_fraction, r.seed)
        norm = fit_normalisation(d.x_train, per)
        for k, (xs, ys) in parts.items():
            xs.append(torch.from_numpy(norm.apply(getattr(d, f"x_{k}"))))
            ys.append(torch.from_numpy(getattr(d, f"y_{k}")).long())
        datasets.append(d)
        norms.append(norm)
    out = {k: (torch.stack(xs).to(dev), torch.stack(ys).to(dev)) for k, (xs, ys) in parts.items()}
    return out, datasets, norms


def _per_power(base: CRNet, params: dict[str, Tensor]) -> dict[str, Tensor]:
    """``fit_range ** -k`` per coefficient row of every polynomial (``loop._scaled_step``)."""
    out = {}
    for name, module in base.named_modules():
        if isinstance(module, PolyAct):
            key = f"net.{name}.coeffs"
            k = torch.tensor(module.powers, dtype=params[key].dtype, device=params[key].device)
            out[key] = (base.config.fit_range**-k).view(1, -1, 1)
    return out


def _per_net(v: Tensor, like: Tensor) -> Tensor:
    """A ``(M,)`` vector shaped to broadcast against a stacked ``(M, ...)`` tensor."""
    return v.view(-1, *([1] * (like.dim() - 1)))


def train_stacked(
    recipes: Sequence[Recipe], device: str = "cpu", probe_every: int | None = None
) -> list[StackedRun]:
    """Train ``recipes`` (one shape, see ``PER_NET``) together; one ``StackedRun`` each.
    ``probe_every``: take the training-time smoothness readings (``Probes``) and keep each
    net's best weights, normalisation and calibration arrays."""
    check_stackable(recipes)
    dev = torch.device(device)
    torch.use_deterministic_algorithms(True, warn_only=True)
    r0, m = recipes[0], len(recipes)
    data, datasets, norms = _data(recipes, dev)
    nets = [
        build_net(net_config_for(r, d), seed=r.seed).to(dev)
        for r, d in zip(recipes, datasets, strict=True)
    ]
    base = _WithTerms(copy.deepcopy(nets[0])).to("meta")
    params, buffers = stack_module_state([_WithTerms(n) for n in nets])
    scale = _per_power(base.net, params)
    kind = heads.default_loss(r0.task) if r0.loss == "auto" else r0.loss
    lam = torch.tensor([r.dreg_lambda for r in recipes], device=dev)
    lr0 = torch.tensor([r.lr for r in recipes], device=dev)
    wd = torch.tensor([r.weight_decay for r in recipes], device=dev)

    def one_loss(p, b, x, y, lam_m):
        logits, terms, excess = functional_call(base, (p, b), (x,))
        ce = heads.loss(r0.task, kind, logits, y)
        term = dreg.penalty(terms, 1.0)
        loss = ce + lam_m * term
        if r0.range_penalty > 0 and excess:
            loss = loss + r0.range_penalty * torch.stack(excess).sum()
        return loss, ce

    def one_logits(p, b, x):
        return functional_call(base, (p, b), (x,))[0]

    shared = _shared_keys(base.net)

    def one_probe(p, b, x, y):
        """The batch's mean input-gradient norm (of each sample's argmax logit) and the task
        loss's gradient norm over the shared weights: ``smoothness.StepProbe``'s readings."""

        def task_loss(w):
            return heads.loss(r0.task, kind, functional_call(base, ({**p, **w}, b), (x,))[0], y)

        def chosen(xx):
            logits = functional_call(base, (p, b), (xx,))[0]
            return logits.gather(1, logits.argmax(dim=1, keepdim=True)).sum()

        gw = grad(task_loss)({k: p[k] for k in shared})
        weight_norm = torch.stack([g.pow(2).sum() for g in gw.values()]).sum().sqrt()
        return grad(chosen)(x).flatten(1).norm(dim=1).mean(), weight_norm

    losses = vmap(one_loss)
    logits_of = vmap(one_logits)
    probe_of = vmap(one_probe)
    probes = [Probes([], [], []) for _ in range(m)]
    x_train, y_train = data["train"]
    n = x_train.shape[1]
    gens = [torch.Generator().manual_seed(r.seed) for r in recipes]
    total = r0.epochs * math.ceil(n / r0.batch_size)
    exp_avg = {k: torch.zeros_like(v) for k, v in params.items()}
    exp_avg_sq = {k: torch.zeros_like(v) for k, v in params.items()}
    active = torch.ones(m, dtype=torch.bool, device=dev)
    failed: list[str | None] = [None] * m
    best_val = torch.full((m,), -math.inf, dtype=torch.float64)
    best_epoch, epochs, stale = [0] * m, [0] * m, [0] * m
    best = {k: v.detach().clone() for k, v in params.items()}
    rows = torch.arange(m, device=dev).view(-1, 1)
    step = 0
    for epoch in range(1, r0.epochs + 1):
        orders = torch.stack([torch.randperm(n, generator=g) for g in gens]).to(dev)
        for start in range(0, n, r0.batch_size):
            idx = orders[:, start : start + r0.batch_size]
            xb, yb = x_train[rows, idx], y_train[rows, idx]
            if probe_every and step % probe_every == 0:
                with torch.no_grad():  # the readings only: grad inside still differentiates
                    batch_norm, weight_norm = probe_of(params, buffers, xb, yb)
                for i in active.nonzero().flatten().tolist():
                    probes[i].batch_norms.append(float(batch_norm[i]))
                    probes[i].weight_norms.append(float(weight_norm[i]))
            loss, _ = losses(params, buffers, xb, yb, lam)
            bad = ~torch.isfinite(loss) & active
            for i in bad.nonzero().flatten().tolist():
                failed[i] = f"training step {step}: the loss is {loss[i].item()}"
            active &= ~bad
            loss = torch.where(active, loss, torch.zeros_like(loss))
            grads = torch.autograd.grad(loss.sum(), list(params.values()))
            grads = dict(zip(params, grads, strict=True))
            lr = lr0 * scheduled_lr(1.0, r0.lr_schedule, step, total) * active
            clipped = _adam_step(params, grads, exp_avg, exp_avg_sq, step + 1, lr, wd, r0, scale)
            if probe_every:
                for i in active.nonzero().flatten().tolist():
                    probes[i].all_norms.append(float(clipped[i]))
            step += 1
        val = _accuracy(logits_of(params, buffers, data["val"][0]), data["val"][1])
        for i in range(m):
            if not active[i]:
                continue
            epochs[i] = epoch
            if val[i] > best_val[i]:
                best_val[i], best_epoch[i], stale[i] = val[i], epoch, 0
                for k in params:
                    best[k][i] = params[k][i].detach()
            else:
                stale[i] += 1
                if stale[i] >= r0.patience:
                    active[i] = False
        if not active.any():
            break
    test = _accuracy(logits_of(best, buffers, data["test"][0]), data["test"][1])
    runs = []
    for i, r in enumerate(recipes):
        run = StackedRun(r, float(best_val[i]), float(test[i]), best_epoch[i], epochs[i], failed[i])
        if probe_every and failed[i] is None:
            net = nets[i]
            state = {k: v[i] for k, v in {**buffers, **best}.items()}
            net.load_state_dict({k.removeprefix("net."): v for k, v in state.items()})
            run = replace(
                run,
                net=net.eval(),
                normalisation=norms[i],
                calib=calib_arrays(datasets[i], r.seed),
                probes=probes[i],
            )
        runs.append(run)
    return runs


def _shared_keys(net: CRNet) -> list[str]:
    """The stacked parameter names of ``smoothness.shared_weights``: every Linear/Conv
    weight and bias."""
    shared = {id(p) for p in shared_weights(net)}
    return [f"net.{name}" for name, p in net.named_parameters() if id(p) in shared]


@torch.no_grad()
def _accuracy(logits: Tensor, y: Tensor) -> Tensor:
    return (logits.argmax(dim=-1) == y).double().mean(dim=1).cpu()


@torch.no_grad()
def _adam_step(
    params: dict[str, Tensor],
    grads: dict[str, Tensor],
    exp_avg: dict[str, Tensor],
    exp_avg_sq: dict[str, Tensor],
    t: int,
    lr: Tensor,
    wd: Tensor,
    recipe: Recipe,
    scale: dict[str, Tensor],
) -> Tensor:
    """``torch.optim.AdamW`` (or ``Adam``) step ``t`` with a learning rate per net, each net's
    gradient clipped to ``recipe.clip_grad`` on its own, and each polynomial coefficient row's
    update scaled by ``fit_range ** -k`` as ``train._scaled_step`` does. Returns each net's
    gradient norm after clipping (what a single run's ``on_step`` reads)."""
    norm = torch.stack([g.flatten(1).pow(2).sum(dim=1) for g in grads.values()]).sum(0).sqrt()
    if recipe.clip_grad > 0:
        coef = (recipe.clip_grad / (norm + 1e-6)).clamp(max=1.0)
        grads = {k: g * _per_net(coef, g) for k, g in grads.items()}
        norm = norm * coef
    b1, b2 = BETAS
    bc1, bc2 = 1 - b1**t, 1 - b2**t
    for k, p in params.items():
        g = grads[k]
        lr_k, wd_k = _per_net(lr, p), _per_net(wd, p)
        if recipe.optimizer == "adam":
            g = g + wd_k * p  # Adam's L2 term enters the gradient
        old = p.detach().clone() if k in scale else None
        if recipe.optimizer == "adamw":
            p.mul_(1 - lr_k * wd_k)
        exp_avg[k].lerp_(g, 1 - b1)
        exp_avg_sq[k].mul_(b2).addcmul_(g, g, value=1 - b2)
        denom = (exp_avg_sq[k].sqrt() / math.sqrt(bc2)).add_(EPS)
        p.sub_(lr_k / bc1 * exp_avg[k] / denom)
        if old is not None:
            p.copy_(old + (p - old) * scale[k])
    return norm


def stack_shape(recipe: Recipe) -> tuple:
    """What recipes of one stack share: every field but ``PER_NET``, as a hashable key."""
    return tuple(
        (f.name, repr(getattr(recipe, f.name))) for f in fields(Recipe) if f.name not in PER_NET
    )


def stack_groups(recipes: Sequence[Recipe]) -> list[list[int]]:
    """Indices of ``recipes`` grouped by ``stack_shape``, in first-seen order: each group can
    be one ``train_stacked`` call."""
    groups: dict[tuple, list[int]] = {}
    for i, r in enumerate(recipes):
        groups.setdefault(stack_shape(r), []).append(i)
    return list(groups.values())


def seed_spread(values: Sequence[float]) -> float:
    """The sample standard deviation (ddof 1) of ``values``: the seed noise a stacked and a
    single run are compared within."""
    return float(np.std(np.asarray(values, dtype=np.float64), ddof=1))
