"""The parity oracle: PyTorch's own outputs and derivatives, saved for devices without torch.

The reference is the trained ``CRNet`` itself, evaluated unfolded in float32
(with the domain guard's clamps when the export has one), so a mistake in any
fold or in the lowering shows up as a parity failure downstream.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from cr_edge.artifacts import atomic
from cr_edge.checkpoint import Checkpoint
from cr_edge.heads import ordinal_outputs
from cr_edge.poly import PolyAct

ORACLE_SEED = 20240229
CALIB_REF, RANDOM_REF, EDGE_REF = 128, 32, 32  # how many reference inputs of each kind


class ReferenceNet(nn.Module):
    """Raw input -> the shipped ``y``: normalisation, the trained blocks, the task's head
    (logits, de-normalised values, or ordinal class probabilities) and, optionally, the
    guard's clamps."""

    def __init__(self, ckpt: Checkpoint, guard: list[tuple[np.ndarray, np.ndarray]] | None) -> None:
        super().__init__()
        self.net = ckpt.net
        self.task = ckpt.task
        scale = ckpt.target_scale
        self.target = (scale.mean, scale.std) if scale is not None else None
        norm = ckpt.normalisation
        self.text = norm is None  # token ids: the first block pools them, nothing to standardise
        self.bounds = [
            (torch.tensor(lo, dtype=torch.float32), torch.tensor(hi, dtype=torch.float32))
            for lo, hi in guard or []
        ] or None
        if self.text:
            return
        spatial = (1,) * (len(ckpt.net_config.input_shape) - 1)  # (c, length) or (c, h, w)
        shape = (-1, *spatial) if norm.per == "channel" else tuple(norm.mean.shape)
        self.register_buffer("mean", torch.tensor(norm.mean, dtype=torch.float32).reshape(shape))
        self.register_buffer("std", torch.tensor(norm.std, dtype=torch.float32).reshape(shape))

    def forward(self, x: Tensor) -> Tensor:
        return self.outputs(x)[0]

    def outputs(self, x: Tensor, start: int = 0) -> tuple[Tensor, ...]:
        """Every output the exported model has, in its order (``y``, then ``rank``); from
        block ``start`` on (1: ``x`` is a text net's pooled embedding)."""
        h = self._net(x, start)
        if self.task == "ordinal":
            return ordinal_outputs(h)
        if self.target is not None:
            return (h * self.target[1] + self.target[0],)
        return (h,)

    def _net(self, x: Tensor, start: int = 0) -> Tensor:
        h = x if self.text else (x - self.mean) / self.std
        polys = 0
        for block in self.net.blocks[start:]:
            if self.bounds is not None and isinstance(block, PolyAct):
                lo, hi = self.bounds[polys]
                view = (1, -1) + (1,) * (h.dim() - 2)
                h = torch.minimum(torch.maximum(h, lo.view(view)), hi.view(view))
                polys += 1
            h = block(h)
        return h


class FromPooled(nn.Module):
    """A text reference net from its pooled embedding on: what the companion differentiates."""

    def __init__(self, ref_net: ReferenceNet) -> None:
        super().__init__()
        self.ref = ref_net

    def forward(self, pooled: Tensor) -> Tensor:
        return self.ref.outputs(pooled, start=1)[0]


def reference_inputs(
    calib: dict[str, np.ndarray], seed: int = ORACLE_SEED, vocab: int = 0
) -> np.ndarray:
    """Training inputs, the test split, Gaussian points and points at the edge of the data's box.

    Token ids (``vocab`` rows in the table) get random texts instead: random ids at random
    lengths, among them a text of padding only and one that fills every position.
    """
    rng = np.random.default_rng(seed)
    if calib["x"].dtype.kind in "iu":
        return _text_inputs(calib, rng, vocab)
    x = calib["x"].astype(np.float32)
    lo, hi = x.min(axis=0), x.max(axis=0)
    mean, std = x.mean(axis=0), x.std(axis=0)
    random = mean + std * rng.standard_normal((RANDOM_REF, *x.shape[1:]))
    corners = rng.integers(0, 2, size=(EDGE_REF, *x.shape[1:]))
    edge = np.where(corners == 1, hi, lo)
    parts = [x[:CALIB_REF], calib.get("x_test", x[:0]), random, edge]
    return np.concatenate([p.astype(np.float32) for p in parts])


def _text_inputs(calib: dict[str, np.ndarray], rng: np.random.Generator, vocab: int) -> np.ndarray:
    x = calib["x"].astype(np.int64)
    n, max_len = RANDOM_REF + EDGE_REF, x.shape[1]
    ids = rng.integers(1, vocab, size=(n, max_len))
    lengths = np.concatenate([[0, max_len], rng.integers(1, max_len + 1, size=n - 2)])
    ids[np.arange(max_len) >= lengths[:, None]] = 0
    parts = [x[:CALIB_REF], calib.get("x_test", x[:0]), ids]
    return np.concatenate([p.astype(np.int64) for p in parts])


def _differentiated(ref_net: ReferenceNet, x: Tensor) -> tuple[nn.Module, Tensor]:
    """The function the oracle's ``jvp`` is of, and its input: the net at ``x``, or for text
    the net from the pooled embedding of the ids ``x`` on."""
    if not getattr(ref_net, "text", False):
        return ref_net, x
    with torch.no_grad():
        return FromPooled(ref_net), ref_net.net.blocks[0](x)


def build_oracle(
    ref_net: ReferenceNet, x: np.ndarray, seed: int = ORACLE_SEED
) -> dict[str, np.ndarray]:
    """``x``, ``y``, unit directions ``v`` and autograd ``jvp = J(x) v``, all float32."""
    rng = np.random.default_rng(seed + 1)
    text = getattr(ref_net, "text", False)
    ids = torch.from_numpy(x)
    shape = (len(x), ref_net.net.config.embed_dim) if text else x.shape
    v = rng.standard_normal(shape).astype(np.float32)
    v /= np.linalg.norm(v.reshape(len(v), -1), axis=1).reshape((-1,) + (1,) * (v.ndim - 1))
    task = ref_net.task if isinstance(ref_net, ReferenceNet) else "classify"
    # The same net in float64 (on a copy): how far a float32 oracle is from exact, which is
    # part of what a float32 runtime may differ from it by (cr_edge.validate.tolerances).
    # A regression or ordinal head is one score: J(x) is rank one, and along a random v
    # that is nearly orthogonal to its gradient J v is a small difference of large float32
    # products. The reference must be the exact side of the comparison, so these heads
    # take their oracle from the float64 copy, rounded once at the end.
    wide = _float64(ref_net)
    x64 = ids if text else ids.double()
    y64, jvp64, norm64 = autograd_jvp(
        *_differentiated(wide, x64), torch.from_numpy(v).double(), with_norm=True
    )
    if task == "classify":
        y, jvp, jac_norm = autograd_jvp(
            *_differentiated(ref_net.eval(), ids), torch.from_numpy(v), with_norm=True
        )
    else:
        y, jvp, jac_norm = y64, jvp64, norm64
    oracle = {"x": x, "y": _f32(y), "v": v, "jvp": _f32(jvp), "jac_norm": _f32(jac_norm)}
    oracle.update(y_float64=y64.detach().numpy(), jvp_float64=jvp64.detach().numpy())
    if task == "ordinal":
        with torch.no_grad():
            oracle["rank"] = _f32(wide.outputs(x64)[1])
    return oracle


def _float64(ref_net: ReferenceNet) -> ReferenceNet:
    wide = copy.deepcopy(ref_net).double().eval()
    if getattr(wide, "bounds", None) is not None:
        wide.bounds = [(lo.double(), hi.double()) for lo, hi in wide.bounds]
    return wide


def _f32(t: Tensor) -> np.ndarray:
    return t.detach().float().numpy()


def autograd_jvp(
    net: nn.Module, x: Tensor, v: Tensor, with_norm: bool = False
) -> tuple[Tensor, ...]:
    """``(y, J(x) v)`` by reverse-mode autograd, one backward pass per output column; with
    ``with_norm`` also ``||J(x)||_F`` per sample (the rows are at hand anyway).

    Samples are independent, so the gradient of ``y[:, k].sum()`` holds row ``k`` of every
    sample's Jacobian. Reverse mode is what training trusts; PolyAct has no forward-mode rule.
    """
    x = x.detach().clone().requires_grad_(True)
    y = net(x)
    cols, norm_sq = [], torch.zeros(x.shape[0], dtype=x.dtype)
    for k in range(y.shape[1]):
        (row,) = torch.autograd.grad(y[:, k].sum(), x, retain_graph=k + 1 < y.shape[1])
        cols.append((row * v).flatten(1).sum(dim=1))
        norm_sq = norm_sq + row.flatten(1).square().sum(dim=1)
    if with_norm:
        return y.detach(), torch.stack(cols, dim=1), norm_sq.sqrt()
    return y.detach(), torch.stack(cols, dim=1)


def save_oracle(path: Path, oracle: dict[str, np.ndarray], calib: dict[str, np.ndarray]) -> None:
    extra = {k: calib[k] for k in ("x_test", "y_test", "t_test") if k in calib}
    atomic.write_npz(path, **oracle, **extra)
