"""The parity oracle: PyTorch's own outputs and derivatives, saved for devices without torch.

The reference is the trained ``CRNet`` itself, evaluated unfolded in float32
(with the domain guard's clamps when the export has one), so a mistake in any
fold or in the lowering shows up as a parity failure downstream.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from cr_edge import atomic
from cr_edge.checkpoint import Checkpoint
from cr_edge.poly import PolyAct

ORACLE_SEED = 20240229
CALIB_REF, RANDOM_REF, EDGE_REF = 128, 32, 32  # how many reference inputs of each kind


class ReferenceNet(nn.Module):
    """Raw input -> logits: normalisation, the trained blocks and, optionally, the guard's clamps."""

    def __init__(self, ckpt: Checkpoint, guard: list[tuple[np.ndarray, np.ndarray]] | None) -> None:
        super().__init__()
        self.net = ckpt.net
        norm = ckpt.normalisation
        spatial = (1,) * (len(ckpt.net_config.input_shape) - 1)  # (c, length) or (c, h, w)
        shape = (-1, *spatial) if norm.per == "channel" else tuple(norm.mean.shape)
        self.register_buffer("mean", torch.tensor(norm.mean, dtype=torch.float32).reshape(shape))
        self.register_buffer("std", torch.tensor(norm.std, dtype=torch.float32).reshape(shape))
        self.bounds = (
            [
                (torch.tensor(lo, dtype=torch.float32), torch.tensor(hi, dtype=torch.float32))
                for lo, hi in guard
            ]
            if guard
            else None
        )

    def forward(self, x: Tensor) -> Tensor:
        h = (x - self.mean) / self.std
        polys = 0
        for block in self.net.blocks:
            if self.bounds is not None and isinstance(block, PolyAct):
                lo, hi = self.bounds[polys]
                view = (1, -1) + (1,) * (h.dim() - 2)
                h = torch.minimum(torch.maximum(h, lo.view(view)), hi.view(view))
                polys += 1
            h = block(h)
        return h


def reference_inputs(calib: dict[str, np.ndarray], seed: int = ORACLE_SEED) -> np.ndarray:
    """Training inputs, the test split, Gaussian points and points at the edge of the data's box."""
    rng = np.random.default_rng(seed)
    x = calib["x"].astype(np.float32)
    lo, hi = x.min(axis=0), x.max(axis=0)
    mean, std = x.mean(axis=0), x.std(axis=0)
    random = mean + std * rng.standard_normal((RANDOM_REF, *x.shape[1:]))
    corners = rng.integers(0, 2, size=(EDGE_REF, *x.shape[1:]))
    edge = np.where(corners == 1, hi, lo)
    parts = [x[:CALIB_REF], calib.get("x_test", x[:0]), random, edge]
    return np.concatenate([p.astype(np.float32) for p in parts])


def build_oracle(
    ref_net: nn.Module, x: np.ndarray, seed: int = ORACLE_SEED
) -> dict[str, np.ndarray]:
    """``x``, ``y``, unit directions ``v`` and autograd ``jvp = J(x) v``, all float32."""
    rng = np.random.default_rng(seed + 1)
    v = rng.standard_normal(x.shape).astype(np.float32)
    v /= np.linalg.norm(v.reshape(len(v), -1), axis=1).reshape((-1,) + (1,) * (v.ndim - 1))
    y, jvp = autograd_jvp(ref_net.eval(), torch.from_numpy(x), torch.from_numpy(v))
    return {"x": x, "y": y.numpy(), "v": v, "jvp": jvp.numpy()}


def autograd_jvp(net: nn.Module, x: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
    """``(y, J(x) v)`` by reverse-mode autograd, one backward pass per output column.

    Samples are independent, so the gradient of ``y[:, k].sum()`` holds row ``k`` of every
    sample's Jacobian. Reverse mode is what training trusts; PolyAct has no forward-mode rule.
    """
    x = x.detach().clone().requires_grad_(True)
    y = net(x)
    cols = []
    for k in range(y.shape[1]):
        (row,) = torch.autograd.grad(y[:, k].sum(), x, retain_graph=k + 1 < y.shape[1])
        cols.append((row * v).flatten(1).sum(dim=1))
    return y.detach(), torch.stack(cols, dim=1)


def save_oracle(path: Path, oracle: dict[str, np.ndarray], calib: dict[str, np.ndarray]) -> None:
    extra = {k: calib[k] for k in ("x_test", "y_test") if k in calib}
    atomic.write_npz(path, **oracle, **extra)
