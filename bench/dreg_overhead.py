"""What DREG costs per training step, against no penalty and against two autograd penalties.

Four sides, each a full training step (forward + loss + backward + Adam step) on the same
CR MLP architecture, the same initial weights, the same batch and the same optimizer settings:

  a  plain:   cross-entropy only (PolyAct net, no penalty)
  b  DREG:    ``forward_with_jacobians`` + ``dreg.penalty`` (closed form, no double backward)
  c  exact:   the same layer-Jacobian norms ``||J_l||_F^2`` built by autograd
              (``torch.func.vmap(jacrev(h -> act(W h + b)))``, squares summed)
  d  input-J: the usual input-Jacobian penalty by double backward with one random projection
              (Hoffman et al., 2019: ``C * ||v^T J||^2``, ``v`` a random unit vector on the logits)

Each side trains its own copy of the model so that every trajectory is a real training run.
Sides are interleaved (a b c d a b c d ...) so that drift in the machine's speed hits all of
them alike. In each round a side's time is the fastest of its repeated steps; ratios are taken
within a round, and the table reports their median and p10-p90 over the rounds.

Run from the repository root: ``python -m bench.dreg_overhead [--threads N]``.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bench.pages import add_page_option, recorded
from cr_edge import dreg
from cr_edge.nets import CRNet, NetConfig, build_net, is_activation

Step = Callable[[], None]
LossFn = Callable[[CRNet, Tensor, Tensor], Tensor]
SIDES = ("a", "b", "c", "d")
RATIOS = (("b", "a"), ("c", "b"), ("d", "b"))
TARGETS = {("b", "a"): "<= 1.3", ("c", "b"): ">= 10 @256", ("d", "b"): ">= 1.5 @256"}


def plain_loss(model: CRNet, x: Tensor, y: Tensor) -> Tensor:
    return F.cross_entropy(model(x), y)


def dreg_loss(model: CRNet, x: Tensor, y: Tensor) -> Tensor:
    logits, terms = model.forward_with_jacobians(x)
    return F.cross_entropy(logits, y) + dreg.penalty(terms)


def exact_loss(model: CRNet, x: Tensor, y: Tensor) -> Tensor:
    """DREG's quantity, but with each layer Jacobian materialised per sample by autograd."""
    logits, terms = exact_terms(model, x)
    return F.cross_entropy(logits, y) + dreg.penalty(terms)


def exact_terms(model: CRNet, x: Tensor) -> tuple[Tensor, list[Tensor]]:
    """Logits and per-sample ``||J_l||_F^2`` of every activated layer, by ``vmap(jacrev)``."""
    terms = []
    blocks = list(model.blocks)
    for i, block in enumerate(blocks):
        if i + 1 < len(blocks) and is_activation(blocks[i + 1]):
            terms.append(_jacobian_sq(block, blocks[i + 1], x))
        x = block(x)
    return x, terms


def _jacobian_sq(layer: nn.Module, act: nn.Module, h: Tensor) -> Tensor:
    def one_sample(v: Tensor) -> Tensor:
        return act(layer(v.unsqueeze(0))).squeeze(0)

    jac = torch.func.vmap(torch.func.jacrev(one_sample))(h)
    return jac.pow(2).flatten(1).sum(dim=1)


def input_jacobian_loss(model: CRNet, x: Tensor, y: Tensor) -> Tensor:
    """Hoffman et al. (2019): ``||J||_F^2 ~ C * ||v^T J||^2`` with one random unit ``v``."""
    x = x.detach().requires_grad_(True)
    logits = model(x)
    v = torch.randn_like(logits)
    v = v / v.norm(dim=1, keepdim=True)
    (vjp,) = torch.autograd.grad((logits * v).sum(), x, create_graph=True)
    estimate = logits.shape[1] * vjp.pow(2).flatten(1).sum(dim=1)
    return F.cross_entropy(logits, y) + dreg.penalty([estimate])


LOSSES = {"a": plain_loss, "b": dreg_loss, "c": exact_loss, "d": input_jacobian_loss}


def make_step(loss_fn: LossFn, model: CRNet, x: Tensor, y: Tensor) -> Step:
    params = list(model.parameters())
    opt = torch.optim.Adam(params, lr=1e-3)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        # inputs=params: side d's x requires grad, and its gradient is no part of the step.
        loss_fn(model, x, y).backward(inputs=params)
        opt.step()

    return step


def block_time(step: Step, n: int) -> float:
    """Fastest of ``n`` back-to-back steps, each timed alone.

    The minimum, as ``timeit`` advises: on a shared machine the slower repeats measure the
    other processes, not the step, and the minimum of each side is taken the same way.
    """
    best = float("inf")
    for _ in range(n):
        start = time.perf_counter()
        step()
        best = min(best, time.perf_counter() - start)
    return best


def repeats_for(step: Step, budget: float) -> int:
    """How many steps fill ``budget`` seconds; a fast side gets more, to steady its minimum."""
    single = block_time(step, 2)  # also the warm-up
    return max(1, round(budget / single))


def bench_width(width: int, batch: int, rounds: int, budget: float) -> dict[str, list[float]]:
    """Per-round step times (seconds) of every side, the sides interleaved round by round."""
    config = NetConfig(input_shape=(64,), hidden=(width, width), n_classes=10)
    base = build_net(config, seed=0)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(batch, 64, generator=gen)
    y = torch.randint(0, 10, (batch,), generator=gen)
    check_same_quantity(base, x)
    steps = {s: make_step(LOSSES[s], copy.deepcopy(base), x, y) for s in SIDES}
    reps = {s: repeats_for(steps[s], budget) for s in SIDES}
    times: dict[str, list[float]] = {s: [] for s in SIDES}
    for _ in range(rounds):
        for s in SIDES:
            times[s].append(block_time(steps[s], reps[s]))
    return times


def check_same_quantity(model: CRNet, x: Tensor) -> None:
    """Sides b and c must penalise the same numbers, or their timings compare nothing."""
    with torch.no_grad():
        _, closed = model.forward_with_jacobians(x)
    _, exact = exact_terms(model, x)
    for b, c in zip(closed, exact, strict=True):
        torch.testing.assert_close(b, c.detach(), rtol=1e-4, atol=1e-6)


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[round(q * 100) - 1]


def print_width(width: int, times: dict[str, list[float]]) -> None:
    ms = "  ".join(f"{s} {statistics.median(times[s]) * 1e3:.2f}" for s in SIDES)
    print(f"{width:>5}  step ms (median of per-round minima): {ms}")
    for num, den in RATIOS:
        ratios = [n / d for n, d in zip(times[num], times[den], strict=True)]
        spread = f"{percentile(ratios, 0.1):.2f}-{percentile(ratios, 0.9):.2f}"
        target = TARGETS[(num, den)]
        print(
            f"{width:>5}  {num}/{den}  {statistics.median(ratios):>8.2f}  {spread:>12}  {target:>11}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--budget", type=float, default=0.03, help="seconds per side per round")
    add_page_option(parser, "dreg_overhead")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(
        f"torch {torch.__version__}, threads {torch.get_num_threads()}, batch {args.batch}, "
        f"MLP 64-w-w-10, PolyAct degree 3, Adam; {args.rounds} interleaved rounds (a b c d)"
    )
    print(f"load average before: {os.getloadavg()[0]:.2f}")
    print(f"{'width':>5}  {'ratio':>3}  {'median':>8}  {'p10-p90':>12}  {'target':>11}")
    for width in (32, 256):
        print_width(width, bench_width(width, args.batch, args.rounds, args.budget))
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    with recorded("dreg_overhead", "--page" in sys.argv[1:]):
        main()
