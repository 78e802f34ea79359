"""Parity of one candidate three ways, so that the verdict holds on CPUs other than this one.

1. ``onnxruntime``: the local kernels, at batch 1 (as deployed; dynamic quantization
   picks its activation scale per batch) and at batch 64;
2. ``exact``: onnx's reference evaluator, exact integer maths (the graph's meaning);
3. ``avx2``: the same with the x86 AVX2 u8 x s8 kernel emulated (int16 pair sums),
   what a machine without VNNI computes whatever machine this runs on.

An fp16 graph has no integer kernel; its third way is ``fp16 hw`` (``fp16_eval``): fp16
products summed in fp16, as a core with fp16 arithmetic (ARMv8.2-A FP16) runs its GEMM,
judged at the worst of the plausible accumulation orders (``fp16_eval.ORDERS``).

onnxruntime's ``MatMulNBits`` at accuracy level 4 has no AVX2 way to emulate: no int16
lane of MLAS's AVX2 kernel can saturate (``nbits_isa``, checked per node), so the exact
way is what AVX2, VNNI and ARM64 dotprod/i8mm compute. ARM64 cores without dotprod
compute it in float: the ``no-dotprod`` way. A 4-bit node that ARM64 runs through
KleidiAI (per-row activations, not emulated) leaves the verdict ``arm64 unjudged``.

A candidate passes only if every way passes. The exact and emulated evaluations run
at batch 1 as well only when the graph quantizes activations at run time (its
result then depends on the batch); each note says which ways were not run and why,
in terms true of the candidate (no integer product, float MatMulNBits, or the bound).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
import onnxruntime as ort

from cr_edge.quantize.fp16_eval import ORDERS, Fp16Session, is_fp16
from cr_edge.quantize.integer_eval import ReferenceSession, emulated_ops, integer_kernel_nodes
from cr_edge.quantize.measure import Parity, as_session, parity, session
from cr_edge.quantize.nbits_isa import avx2_refusal, nbits_nodes
from cr_edge.quantize.nbits_isa import note as nbits_note
from cr_edge.runtimes.runtime import Session
from cr_edge.validate.oracle import Oracle

LARGE_BATCH = 64  # the "one large batch" beside batch 1
# What each way's failure means, for the report.
MEANING = {
    "onnxruntime b64": "fails with this CPU's onnxruntime kernels at batch 64",
    "onnxruntime b1": "fails at batch 1 (as deployed) with this CPU's onnxruntime kernels",
    "exact": "fails in exact integer maths (the quantized graph itself is off)",
    "exact b1": "fails in exact integer maths at batch 1",
    "exact b64": "fails in exact integer maths at batch 64",
    "avx2 b64": "overflows in u8s8 kernels without VNNI at batch 64 (AVX2 int16 pair sums)",
    "avx2": "overflows in u8s8 kernels without VNNI (AVX2 int16 pair sums)",
    "avx2 b1": "overflows in u8s8 kernels without VNNI at batch 1 (AVX2 int16 pair sums)",
    "avx2 unjudged": "cannot be judged for CPUs without VNNI",
    "no-dotprod": "fails where MLAS has no int8 MatMulNBits kernel (ARM64 without dotprod "
    "computes it in float)",
    "arm64 unjudged": "cannot be judged for ARM64 with dotprod",
}
UNJUDGED = ("avx2 unjudged", "arm64 unjudged")  # ways that fail because nothing computes them
NO_INTEGER_PRODUCT = "no 8-bit integer matrix product: the AVX2 u8s8 kernel is never used"
KLEIDIAI = (
    "ARM64 with dotprod runs 4-bit MatMulNBits {name!r} (blocks of {block}) through KleidiAI, "
    "whose int8 activations are per row, not per block: not emulated"
)
# An fp16 graph evaluated exactly as it is written: every op in IEEE half precision. This
# CPU's onnxruntime has few fp16 kernels and runs the rest in fp32 behind Casts, so it
# can miss an intermediate above fp16's 65504 that half-precision hardware overflows on.
FP16_EXACT = "fails in true fp16 arithmetic (as fp16 hardware computes it)"
FP16_HW = "fp16 hw"  # the way's name, then the accumulation order it failed (or passed) worst
FP16_ACCUMULATION = "fails with fp16 accumulation (a GEMM on cores with fp16 arithmetic)"


@dataclass(frozen=True)
class Way:
    """One way of computing the candidate, its parity, and (emulation) the saturated pair sums."""

    name: str
    parity: Parity
    saturated: int | None = None
    reason: str | None = None  # an unjudged way: what could not be computed

    def to_json(self) -> dict:
        out = {"name": self.name, "parity": self.parity.to_json(), "saturated": self.saturated}
        return out if self.reason is None else {**out, "reason": self.reason}

    @property
    def failure(self) -> str | None:
        """Why this way fails, with its figures; None when it passes."""
        if self.parity.ok:
            return None
        p, parts = self.parity, []
        if self.name in UNJUDGED:
            return f"{MEANING[self.name]}: {self.reason}"
        if not p.outputs_ok:
            parts.append(f"output err {p.max_abs_err:.3g} > atol {p.atol:.3g}")
        if p.derivatives_ok is False and not np.isfinite(p.jvp_max_err):
            parts.append("jvp not finite (an intermediate overflows)")
        elif p.derivatives_ok is False and p.jvp_min_cos < p.jvp_min_cos_required:
            parts.append(f"jvp cos {p.jvp_min_cos:.4f} (need {p.jvp_min_cos_required})")
        elif p.derivatives_ok is False and p.jvp_max_err > p.jvp_rtol:
            parts.append(f"jvp err {p.jvp_max_err:.3g} (need <= {p.jvp_rtol:g})")
        elif p.derivatives_ok is False:
            parts.append("the companion's y is off (its jvp is within tolerance)")
        if p.derivatives_ok is False and p.kinks_too_many:
            parts.append(p.kinks_too_many)
        if self.saturated:
            parts.append(f"{self.saturated} pair sums saturated")
        if self.name.startswith(FP16_HW):
            order = self.name.removeprefix(FP16_HW).strip(" ()")
            return f"{FP16_ACCUMULATION}, {order} order: {', '.join(parts)}"
        fp16 = p.precision == "fp16" and self.name.startswith("exact")
        return f"{FP16_EXACT if fp16 else MEANING[self.name]}: {', '.join(parts)}"


class AtBatch(Session):
    """``inner`` run ``batch`` samples at a time (validate's ``run_all`` then chunks), unless
    the model fixes its own batch."""

    def __init__(self, inner: Session, batch: int) -> None:
        self._inner, self._batch = inner, batch
        self.inputs, self.outputs, self.metadata = inner.inputs, inner.outputs, inner.metadata

    @property
    def fixed_batch(self) -> int | None:
        return self._inner.fixed_batch or self._batch  # a model's own fixed batch wins

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        return self._inner.run(feeds)


def batch_dependent(model: onnx.ModelProto) -> bool:
    """Whether ``model`` quantizes activations at run time (a scale per batch)."""
    return any(n.op_type == "DynamicQuantizeLinear" for n in model.graph.node)


def three_ways(
    model: onnx.ModelProto,
    companion: onnx.ModelProto | None,
    metadata: dict[str, str],
    oracle: Oracle,
    sess: ort.InferenceSession | None = None,
) -> tuple[list[Way], list[str]]:
    """Every way's parity for ``model`` (and its companion), and notes on ways not run."""
    notes = []
    local = as_session(sess or session(model))
    local_c = as_session(session(companion)) if companion is not None else None
    pairs: list[tuple[str, Session, Session | None]] = [
        *_at_batches("onnxruntime", (local, local_c), (LARGE_BATCH, 1)),
    ]
    # a batch-dependent graph is judged at both batches; otherwise one run holds for any
    batches = (LARGE_BATCH, 1) if batch_dependent(model) else (None,)
    exact = (ReferenceSession(model), companion and ReferenceSession(companion))
    pairs += _at_batches("exact", exact, batches)
    refused = emulated_ops(model)
    half = is_fp16(model)
    nbits = nbits_nodes(model)
    unjudged: list[tuple[str, str]] = []  # (way, reason): fails, nothing computes it
    if half:
        notes.append(f"fp16: judged with fp16 accumulation, worst of {len(ORDERS)} orders")
    elif refused is not None:
        notes.append(f"AVX2 emulation unavailable: {refused}")
        unjudged.append(("avx2 unjudged", refused))
    elif integer_kernel_nodes(model):
        emulated = (
            ReferenceSession(model, avx2=True),
            companion and ReferenceSession(companion, avx2=True),
        )
        pairs += _at_batches("avx2", emulated, batches)
    elif not nbits:
        notes.append(NO_INTEGER_PRODUCT)
    if nbits and not half:
        notes.append(nbits_note(nbits))
        bound = avx2_refusal(nbits)
        if bound is not None:
            unjudged.append(("avx2 unjudged", bound))
        if any(n.int8 for n in nbits):  # a core without an int8 kernel: every level in float
            no_dot = (
                ReferenceSession(model, float_nbits=True),
                companion and ReferenceSession(companion, float_nbits=True),
            )
            pairs += _at_batches("no-dotprod", no_dot, (None,))
        unjudged += [
            ("arm64 unjudged", KLEIDIAI.format(name=n.name, block=n.block))
            for n in nbits
            if n.kleidiai
        ][:1]
    ways = []
    for name, primal, comp in pairs:
        before = _saturated(primal, comp)
        par = parity(primal, comp, metadata, oracle)
        after = _saturated(primal, comp)
        ways.append(Way(name, par, None if after is None else after - before))
    if half:
        ways.append(_fp16_hardware(model, companion, metadata, oracle))
    p = ways[0].parity
    for name, reason in unjudged:  # the verdict would not hold on such a CPU
        failed = Parity(p.precision, float("nan"), p.atol, 0.0, None, False)
        ways.append(Way(name, failed, reason=reason))
    return ways, notes


def _fp16_hardware(
    model: onnx.ModelProto,
    companion: onnx.ModelProto | None,
    metadata: dict[str, str],
    oracle: Oracle,
) -> Way:
    """``fp16 hw (order)``: the worst order of ``ORDERS`` (failing before passing, then the
    larger output error over its tolerance); which order a phone's kernel sums in is not
    known here. Every order is run: the first to fail need not be the worst (an FMA keeps
    a product unrounded, so terms that cancel when both are rounded leave an error)."""
    worst: tuple[tuple[bool, float], str, Parity] | None = None
    for order in ORDERS:
        comp = companion and Fp16Session(companion, order)
        par = parity(Fp16Session(model, order), comp, metadata, oracle)
        err = par.max_abs_err / par.atol if par.atol > 0 else par.max_abs_err
        score = (not par.ok, err if np.isfinite(err) else float("inf"))
        if worst is None or score > worst[0]:
            worst = (score, order, par)
    _, order, par = worst  # type: ignore[misc]
    return Way(f"{FP16_HW} ({order})", par)


def _at_batches(
    name: str, sessions: tuple[Session, Session | None], batches: tuple[int | None, ...]
) -> list[tuple[str, Session, Session | None]]:
    """``name bN`` ways: the pair of sessions run ``N`` samples at a time (None: all at once)."""
    out = []
    for b in batches:
        primal, comp = sessions
        if b is None:
            out.append((name, primal, comp))
        else:
            out.append((f"{name} b{b}", AtBatch(primal, b), comp and AtBatch(comp, b)))
    return out


def _saturated(*sessions: Session | None) -> int | None:
    """Pair sums saturated so far by the emulating sessions among ``sessions``."""
    inner = [s._inner if isinstance(s, AtBatch) else s for s in sessions]
    counts = [s.saturated for s in inner if isinstance(s, ReferenceSession) and s.emulates]
    return sum(counts) if counts else None
