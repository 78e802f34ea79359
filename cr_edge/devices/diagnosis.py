"""Why a device disagrees with the host: the feature of its CPU that likely explains it.

onnxruntime picks its kernels by the CPU's ISA features, so the same model computes
differently on a phone than on the host:

* an fp16 model: on an ARMv8.2-A core with fp16 arithmetic (``fphp``/``asimdhp``:
  Cortex-A55/A76 and later, Neoverse-N1) its fp16 ops run in fp16, where x86 and older
  ARM cores run them in fp32 behind Casts: every rounding of the partial sums is a
  half-precision one;
* an int8 model whose kernels are integer ones (dynamic or static QDQ, MatMulNBits
  with int8 compute): ``i8mm`` (SMMLA), else ``asimddp`` (SDOT, ARMv8.2 dotprod),
  else plain NEON widening multiplies, each a different GEMM with its own
  requantization and saturation;
* otherwise (fp32, or int8 weights dequantized to float): no feature changes the
  arithmetic, only the float kernels' summation order and fused multiply-adds.

The rule reads the device's fingerprint (``fingerprint.py``: ``arch`` and ``isa``) and
what the model computes in (``kernels``); ``explain`` gives the line a report prints
when a device's verdict differs from the host's or its error is ``FACTOR`` x larger.
"""

from __future__ import annotations

import math
from pathlib import Path

FP16, INT8, FLOAT = "fp16", "int8", "float"
FACTOR = 2.0  # a device error this many times the host's is reported even when both pass
INTEGER_OPS = frozenset(
    {
        "MatMulInteger",
        "ConvInteger",
        "QLinearMatMul",
        "QLinearConv",
        "QLinearAdd",
        "QLinearMul",
        "DynamicQuantizeLinear",
        "DynamicQuantizeMatMul",
        "QuantizeLinear",  # activations quantized: onnxruntime fuses QDQ into integer kernels
    }
)
_FP16_ELEM = 10  # onnx.TensorProto.FLOAT16


def kernels(model) -> str:
    """What ``model`` (an ``onnx.ModelProto``) computes in: ``fp16``, ``int8`` or ``float``.

    int8 only when activations are quantized (integer kernels run); int8 weights behind a
    DequantizeLinear (``w8``) or MatMulNBits at float compute (``accuracy_level`` 0) are
    float arithmetic."""
    graph = model.graph
    if any(t.data_type == _FP16_ELEM for t in graph.initializer) or any(
        v.type.tensor_type.elem_type == _FP16_ELEM for v in [*graph.input, *graph.output]
    ):
        return FP16
    for node in graph.node:
        if node.op_type in INTEGER_OPS:
            return INT8
        if node.op_type == "MatMulNBits":
            level = next((a.i for a in node.attribute if a.name == "accuracy_level"), 0)
            if level == 4:
                return INT8
    return FLOAT


def kernels_of(path: str | Path) -> str:
    """``kernels`` of the ONNX file at ``path`` (``float`` for a file onnx cannot read)."""
    import onnx

    try:
        return kernels(onnx.load(str(path), load_external_data=False))
    except Exception:  # a .ort or .pte sibling, or a file a runtime reported on: no rule
        return FLOAT


def likely_cause(kind: str, fingerprint: dict) -> str:
    """The device's CPU feature that most likely changes ``kind``'s arithmetic there."""
    arch = str(fingerprint.get("arch") or "").lower()
    isa = set(fingerprint.get("isa") or [])
    arm = arch in ("aarch64", "arm64") or arch.startswith("arm")
    if kind == FP16:
        if arm and isa & {"fphp", "asimdhp"}:
            have = "/".join(sorted(isa & {"fphp", "asimdhp"}))
            return (
                f"fp16 arithmetic ({have}): onnxruntime runs the fp16 ops in fp16 on this "
                "core, the host in fp32; every ARMv8.2-A core with FP16 (Cortex-A55/A76 "
                "and later, Neoverse-N1) is affected"
            )
        if "avx512fp16" in isa:
            return "fp16 arithmetic (avx512fp16): the fp16 ops run in fp16 on this CPU"
        return (
            "no fp16 arithmetic on this CPU (fp16 ops run in fp32 as on the host): "
            "the float kernels' summation order, not a CPU feature"
        )
    if kind == INT8:
        if arm:
            if "i8mm" in isa:
                return "i8mm (SMMLA int8 matrix multiply): onnxruntime's int8 GEMM on this core"
            if "asimddp" in isa:
                return "dotprod (asimddp, SDOT): onnxruntime's int8 GEMM on this core"
            return "int8 GEMM on plain NEON (no dotprod/i8mm): widening multiply-adds"
        vnni = sorted(isa & {"avx512_vnni", "avx_vnni", "amx_tile"})
        if vnni:
            return f"int8 GEMM with {'/'.join(vnni)} (no u8s8 saturation)"
        return "int8 GEMM without VNNI (the u8s8 pair sums of AVX2 can saturate)"
    return "float kernels' summation order and fused multiply-adds (no CPU feature changes it)"


def disagrees(
    host_error: float | None,
    device_error: float | None,
    host_passed: bool,
    device_passed: bool,
) -> bool:
    """Whether the device's result differs from the host's enough to explain it: the
    verdicts differ, or the device's error is ``FACTOR`` x the host's or more."""
    if host_passed != device_passed:
        return True
    if host_error is None or device_error is None:
        return False
    return device_error > FACTOR * max(host_error, 1e-30)


def explain(
    device: str,
    check: str,
    host_error: float | None,
    device_error: float | None,
    tolerance: float | None,
    kind: str,
    fingerprint: dict,
    rtol: float = 0.0,
) -> str:
    """One line: the error on each side against the tolerance, and the likely cause."""
    ratio = ""
    if host_error and device_error is not None:
        ratio = f" ({device_error / host_error:.1f}x)"
    bound = _g(tolerance) + (f" + {_g(rtol)}|y|" if rtol else "")
    return (
        f"@{device} {check}: error {_g(device_error)} there{ratio}, {_g(host_error)} here, "
        f"tolerance {bound}; likely cause: {likely_cause(kind, fingerprint)}"
    )


def _g(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}"


def headline_error(row, column: str) -> float | None:
    """The headline error of a validate row's ``column``: the max abs error of the
    outputs, the max relative error of the derivatives (the companion's own y is judged
    with the outputs). ``row`` is a ``validate.validator.RuntimeResult``."""
    from cr_edge.validate.outcome import COMPANION_Y

    if row is None:
        return None
    checks = getattr(row, column).checks
    if column == "outputs":
        values = [c.max_abs for c in checks]
    else:
        values = [c.max_rel for c in checks if c.name != COMPANION_Y]
    values = [float(v) for v in values if isinstance(v, (int, float))]
    if not values:
        return None
    return math.nan if any(math.isnan(v) for v in values) else max(values)


def tolerance_of(row, column: str) -> float | None:
    """``atol`` for the outputs, the derivative method's ``rtol`` for the derivatives."""
    if row is None or row.tolerances is None:
        return None
    tol = row.tolerances
    if column == "outputs":
        return tol.atol
    bound = tol.derivative(row.derivatives.figures.get("method", "companion"))
    return bound.rtol if bound is not None else None


def relative_of(row, column: str) -> float:
    """The outputs' relative term ``rtol`` (0 for the derivatives, whose bound is ``rtol``)."""
    if row is None or row.tolerances is None or column != "outputs":
        return 0.0
    return float(row.tolerances.rtol)


def disagreements(results: list, devices: dict) -> list[str]:
    """One ``explain`` line per device row (``RUNTIME@NAME``) whose outputs or derivatives
    disagree with the host's row of the same artifact and runtime (``disagrees``)."""
    from cr_edge.validate.outcome import FAIL, UNAVAILABLE

    host = {(r.artifact, r.runtime): r for r in results if "@" not in r.runtime}
    lines = []
    for row in results:
        if "@" not in row.runtime:
            continue
        runtime, name = row.runtime.rsplit("@", 1)
        here = host.get((row.artifact, runtime))
        if here is None:
            continue
        for column in ("outputs", "derivatives"):
            a, b = getattr(here, column), getattr(row, column)
            if UNAVAILABLE in (a.status, b.status):
                continue
            h, d = headline_error(here, column), headline_error(row, column)
            if disagrees(h, d, a.status != FAIL, b.status != FAIL):
                fingerprint = (devices.get(name) or {}).get("fingerprint") or {}
                kind = kernels_of(row.artifact)
                tol = tolerance_of(row, column)
                rel = relative_of(row, column)
                lines.append(explain(name, column, h, d, tol, kind, fingerprint, rel))
    return lines
