"""Data-free ranges for the Horner chain: exact bounds of each intermediate polynomial.

Behind the domain guard ``z = min(max(a, lo), hi)`` (per-channel bounds) or
``z = clip(a, lo, hi)`` (scalar bounds) every Horner intermediate is a
polynomial in ``z`` per channel, with coefficients read from the initializers. Its
range over ``[lo, hi]`` is exact from the endpoints and the real roots of its
derivative, which is tighter than plain interval arithmetic (that would treat the
two ``z`` factors of ``(z + c2) z`` as independent). The bounds hold for *every*
input, so static int8 never clips a tail the calibration set missed; onnxruntime
receives them as ``TensorQuantOverrides`` (``rmin``/``rmax``).
"""

from __future__ import annotations

import numpy as np
import onnx
from numpy.polynomial import polynomial as P
from onnx import numpy_helper

from cr_edge.quantize.graph import LINEAR, guards
from cr_edge.quantize.measure import probe

# The oracle's random inputs reach ~0.4 of the calibrated span past the digits' range.
INPUT_MARGIN = 0.5


class Chan:
    """A per-channel polynomial in the guarded ``z``: ``coef[c, k]`` multiplies ``z**k``."""

    def __init__(self, coef: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> None:
        self.coef, self.lo, self.hi = coef, lo, hi

    def combine(self, other: Chan | np.ndarray, op: str) -> Chan:
        if isinstance(other, np.ndarray):  # a per-channel (or scalar) constant
            if other.size > self.lo.size:  # a scalar-bounded guard meets its channels
                return self._widened(other.size).combine(other, op)
            k = np.broadcast_to(other.reshape(-1), self.lo.shape)
            coef = self.coef * k[:, None] if op == "Mul" else self.coef.copy()
            if op != "Mul":
                coef[:, 0] += k if op == "Add" else -k
            return Chan(coef, self.lo, self.hi)
        if self.lo.size != other.lo.size:
            width = max(self.lo.size, other.lo.size)
            return self._widened(width).combine(other._widened(width), op)
        if op == "Mul":
            coef = np.stack([P.polymul(a, b) for a, b in zip(self.coef, other.coef, strict=True)])
        else:
            width = max(self.coef.shape[1], other.coef.shape[1])
            a, b = (np.pad(c, ((0, 0), (0, width - c.shape[1]))) for c in (self.coef, other.coef))
            coef = a + b if op == "Add" else a - b
        return Chan(coef, self.lo, self.hi)

    def _widened(self, channels: int) -> Chan:
        """The same polynomial repeated over ``channels`` (from one shared channel)."""
        rep = channels // self.lo.size
        return Chan(
            np.repeat(self.coef, rep, axis=0), np.repeat(self.lo, rep), np.repeat(self.hi, rep)
        )

    def bounds(self) -> tuple[float, float]:
        """Exact ``min`` and ``max`` over all channels and all ``z`` in ``[lo, hi]``."""
        lows, highs = [], []
        for coef, lo, hi in zip(self.coef, self.lo, self.hi, strict=True):
            pts = [lo, hi]
            if coef.size > 2:
                roots = P.polyroots(P.polyder(coef))
                pts += [r.real for r in roots if abs(r.imag) < 1e-9 and lo <= r.real <= hi]
            vals = P.polyval(np.array(pts), coef)
            lows.append(vals.min())
            highs.append(vals.max())
        return float(min(lows)), float(max(highs))


def _identity(lo: np.ndarray, hi: np.ndarray) -> Chan:
    """``z`` itself on ``[lo, hi]``, one row per channel."""
    lo, hi = lo.reshape(-1), hi.reshape(-1)
    return Chan(np.tile([0.0, 1.0], (lo.size, 1)), lo, hi)


def chain_ranges(model: onnx.ModelProto) -> dict[str, tuple[float, float]]:
    """``tensor -> (rmin, rmax)`` for every chain tensor that is a polynomial of a guarded input."""
    consts = {t.name: numpy_helper.to_array(t).astype(np.float64) for t in model.graph.initializer}
    guarded = {g.output: g for g in guards(model, consts)}
    polys: dict[str, Chan] = {}
    for node in model.graph.node:
        ins = list(node.input)
        if node.output and node.output[0] in guarded:
            g = guarded[node.output[0]]
            polys[node.output[0]] = _identity(g.lo, g.hi)
        elif node.op_type in ("Add", "Sub", "Mul") and len(ins) == 2:
            a, b = (polys.get(n, consts.get(n)) for n in ins)
            if isinstance(a, Chan) and b is not None:
                polys[node.output[0]] = a.combine(b, node.op_type)
            elif isinstance(b, Chan) and a is not None and node.op_type != "Sub":
                polys[node.output[0]] = b.combine(a, node.op_type)
    return {name: p.bounds() for name, p in polys.items()}


def overrides(
    model: onnx.ModelProto, feeds: dict[str, np.ndarray], skip: set[str]
) -> dict[str, list[dict]]:
    """Chain bounds, plus widened calibrated ranges for the other linear-layer inputs, as
    onnxruntime ``TensorQuantOverrides``; linear nodes in ``skip`` are left alone.

    A linear layer's input that is not a chain tensor (the network input) has no bound
    from the coefficients; its calibrated range is widened by ``INPUT_MARGIN`` of its span
    on each side, so that inputs a little outside the calibration set are not clipped.
    """
    bounds = chain_ranges(model)
    others = sorted(
        {
            n.input[0]
            for n in model.graph.node
            if n.op_type in LINEAR and n.name not in skip and n.input[0] not in bounds
        }
    )
    for name, values in (probe(model, others, feeds) if others else {}).items():
        lo, hi = float(values.min()), float(values.max())
        pad = INPUT_MARGIN * (hi - lo)
        bounds[name] = (lo - pad, hi + pad)
    return {
        name: [{"rmin": np.float32(lo), "rmax": np.float32(hi)}]
        for name, (lo, hi) in bounds.items()
    }
