"""The bench-only graphs of ``bench.horner``: the same trained MLP with other activations.

Each is the CR net's stage list (``cr_edge.export.stages``) run through ``StageMlp`` with
one activation kind in every polynomial's place:

  pow           ``sum_k a_k * x**k``: the polynomial as a user would first write it
  none          no activation: the Gemms alone
  square        one ``Mul(z, z)`` per layer: the cost of a fused polynomial kernel (one
                dispatch, one read and one write of the tensor) in standard ONNX ops; not
                the trained function
  depressed     the fewest standard ops a cubic allows, ``(t * t + b) * t``: three nodes
  depressed-clip  the same behind one scalar ``Clip(t, -1, 1)``

``depressed_stages`` writes every cubic in that form from the trained float64 weights,
whatever form the export chose: ``p(z) = a3 ((z + s)^3 + b' (z + s)) + c`` with
``s = a2 / (3 a3)``; ``t = (z + s) / R`` goes into the previous layer's rows and bias, ``R`` the
larger distance of the guarded range's ends from the centre ``-s``, so ``[-1, 1]`` in ``t``
covers the guarded range (wider on one side, as any symmetric guard about ``-s`` is); the
factor ``a3 R^3`` goes into the next layer's weights and ``c`` into its bias.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from numpy.polynomial import Polynomial
from torch import Tensor, nn

from cr_edge.export import onnx as onnx_export
from cr_edge.export.pte import PteResult, export_pte
from cr_edge.export.stages import Affine, Flatten, Poly, Stage

KINDS = ("pow", "none", "square", "depressed", "depressed-clip")


class StageMlp(nn.Module):
    """Linear layers (and a flatten) with the activation ``kind`` in every Poly's place."""

    def __init__(self, stages: list[Stage], kind: str) -> None:
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        self.kind = kind
        self.ops: list[tuple[str, int]] = []
        for i, stage in enumerate(stages):
            if isinstance(stage, Affine):
                self._register(i, weight=stage.weight, bias=stage.bias)
                self.ops.append(("linear", i))
            elif isinstance(stage, Poly):
                # depressed: b alone, as its own buffer (indexing a stack would trace a select)
                self._register(i, a=stage.coeffs if kind == "pow" else stage.coeffs[1])
                self.ops.append(("act", i))
            elif isinstance(stage, Flatten):
                self.ops.append(("flatten", i))
            else:
                raise TypeError(f"stage {i} ({type(stage).__name__}) is not in an MLP")

    def _register(self, i: int, **arrays: np.ndarray) -> None:
        for name, value in arrays.items():
            self.register_buffer(f"{name}{i}", torch.tensor(value, dtype=torch.float32))

    def _act(self, x: Tensor, a: Tensor) -> Tensor:
        """``a``: the coefficients (pow) or the depressed chain's ``b``."""
        if self.kind == "pow":
            return sum(a[k] * x**k for k in range(a.shape[0]))
        if self.kind == "none":
            return x
        if self.kind == "square":
            return x * x
        if self.kind == "depressed-clip":
            x = torch.clamp(x, -1.0, 1.0)
        return (x * x + a) * x

    def forward(self, x: Tensor) -> Tensor:
        for op, i in self.ops:
            if op == "flatten":
                x = torch.flatten(x, 1)
            elif op == "linear":
                x = F.linear(x, getattr(self, f"weight{i}"), getattr(self, f"bias{i}"))
            else:
                x = self._act(x, getattr(self, f"a{i}"))
        return x


def depressed_stages(stages: list[Stage]) -> tuple[list[Stage], list[str]]:
    """``stages`` (normalisation folded, polynomials unfolded, guarded) with every cubic in
    the form ``(t * t + b) * t``; and per layer a line on how far the centres and ranges lie.

    Exact algebra in float64; how well float32 then evaluates it is what the bench's parity
    line measures (a centre far outside the range makes ``t`` lose ``z``'s low bits).
    """
    stages = copy.deepcopy(stages)
    notes = []
    for i, poly in enumerate(stages):
        if not isinstance(poly, Poly):
            continue
        prev, nxt = stages[i - 1], next(s for s in stages[i + 1 :] if isinstance(s, Affine))
        if poly.degree != 3 or not isinstance(prev, Affine) or poly.lo is None:
            raise ValueError(f"stage {i}: the floor sides need a guarded cubic after a Gemm")
        width = prev.bias.shape[0]
        a = np.broadcast_to(poly.coeffs, (4, width))
        shift = a[2] / (3 * a[3])
        radius = np.maximum(np.abs(poly.lo + shift), np.abs(poly.hi + shift))
        coeffs = np.zeros((4, width))
        for c in range(width):  # q(t) = p(R t - s), whose t**2 term vanishes
            q = Polynomial(a[:, c])(Polynomial([-shift[c], radius[c]])).coef
            coeffs[:, c] = np.pad(q, (0, 4 - q.size))
        lead, constant = coeffs[3].copy(), coeffs[0].copy()
        prev.weight = prev.weight / radius[:, None]
        prev.bias = (prev.bias + shift) / radius
        nxt.bias = nxt.bias + nxt.weight @ constant
        nxt.weight = nxt.weight * lead[None, :]
        poly.coeffs = np.stack([np.zeros(width), coeffs[1] / lead, np.zeros(width), np.ones(width)])
        poly.monic = poly.shifted = poly.constant_folded = poly.unit = True
        span = np.maximum(poly.hi - poly.lo, 1e-12)
        notes.append(
            f"stage {i}: centre -s outside the guarded range in "
            f"{int(((-shift < poly.lo) | (-shift > poly.hi)).sum())} of {width} channels; "
            f"symmetric guard 2R / guarded span: median {np.median(2 * radius / span):.2g}, "
            f"max {np.max(2 * radius / span):.3g}"
        )
    return stages, notes


def export_onnx(stages: list[Stage], kind: str, example: Tensor, path: Path) -> Path:
    """``StageMlp(stages, kind)`` through cr-edge's own ONNX path, dynamic batch."""
    model = onnx_export.to_onnx(StageMlp(stages, kind), (example,), ["x"], ["y"])
    onnx_export.save(model, path)
    return path


def export_program(stages: list[Stage], kind: str, example: Tensor, path: Path) -> PteResult:
    """``StageMlp(stages, kind)`` through cr-edge's own ``.pte`` path (XNNPACK, dynamic batch)."""
    return export_pte(StageMlp(stages, kind), example, path)
