"""The quantization policy: one validated, JSON-serialisable dataclass per run.

A policy says how the linear layers are quantized (``mode``) and, separately, what
happens to the polynomial's Horner chain (``poly``), because the chain is where a
naive int8 pass loses the model: every Mul/Add of ``((z + c2) z + c1) z`` would get
its own 8-bit rounding. The policy is stored in the quantized model's metadata.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

from cr_edge.errors import InputError

MODES = ("dynamic", "static", "fp16", "auto")
POLYS = ("float", "int16", "int8")
METHODS = ("minmax", "percentile", "entropy", "interval")


@dataclass(frozen=True)
class QuantPolicy:
    """How to quantize one model (and its derivative companion, identically).

    mode
        ``dynamic``: int8 weights, activations quantized at run time (no calibration);
        ``static``: QDQ with calibrated activation ranges; ``fp16``: half precision;
        ``auto``: try the candidates below and keep the best that passes.
    poly
        The Horner chain: ``float`` (left unquantized), ``int16`` (16-bit
        activations), ``int8`` (naive, kept for comparison). Static mode only;
        dynamic quantization never touches Mul/Add, so there it is always float.
    method
        Activation calibration for static mode; ``interval`` bounds the chain's
        intermediates from the coefficients and the domain guard instead of data.
    equalize
        Cross-layer equalization of every Gemm input before int8 (see
        ``quant_equalize``); off only to measure what onnxruntime does alone.
    """

    mode: str = "auto"
    poly: str = "float"
    method: str = "minmax"
    per_channel: bool = True
    equalize: bool = True

    def __post_init__(self) -> None:
        for name, allowed in (("mode", MODES), ("poly", POLYS), ("method", METHODS)):
            value = getattr(self, name)
            if value not in allowed:
                raise InputError(f"--{name} {value!r}: choose from {', '.join(allowed)}")
        if self.mode == "dynamic" and self.poly != "float":
            raise InputError(
                f"--poly {self.poly} needs --mode static: dynamic quantization only "
                "quantizes the linear layers, the Horner chain stays float"
            )

    @property
    def precision(self) -> str:
        """The ``cr_edge.precision`` this policy produces (the tolerance row it is judged by)."""
        return "fp16" if self.mode == "fp16" else "int8"

    @property
    def label(self) -> str:
        if self.mode == "fp16":
            return "fp16"
        name = "dynamic" if self.mode == "dynamic" else f"static/{self.poly}/{self.method}"
        return name if self.equalize else f"{name}/no-eq"

    def to_json(self) -> dict:
        return asdict(self)


def auto_candidates(base: QuantPolicy) -> list[QuantPolicy]:
    """What ``--mode auto`` tries; the naive int8 chain (no equalization) is measured for comparison.

    ``per_channel`` and ``method`` come from the user; fp16 is the fallback when no
    int8 policy passes the int8 tolerances.
    """
    return [
        replace(base, mode="dynamic", poly="float"),
        replace(base, mode="static", poly="float"),
        replace(base, mode="static", poly="int16"),
        replace(base, mode="static", poly="int8", equalize=False),  # onnxruntime alone
        replace(base, mode="fp16", poly="float"),
    ]
