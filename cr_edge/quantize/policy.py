"""The quantization policy and the stage's config: validated, JSON-serialisable dataclasses.

A policy names how the linear layers are quantized (``mode``, a key of the policy
registry in ``apply``) and, separately, what happens to the polynomial's Horner
chain (``poly``), because the chain is where a naive int8 pass loses the model: every
Mul/Add of ``((z + c2) z + c1) z`` would get its own 8-bit rounding. The policy is
stored in the quantized model's metadata; its ``tag`` names the file.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from cr_edge.errors import InputError

MODES = ("auto", "w8", "dynamic", "static", "fp16", "nb8", "nb4")
NBITS = {"nb8": 8, "nb4": 4}  # MatMulNBits modes and their weight bits
REPORT_ONLY = ("nb4",)  # measured and listed by auto, never kept by it
BLOCKS = (16, 32, 64, 128)  # MatMulNBits block sizes (powers of two >= 16, onnxruntime's rule)
PINNED_BLOCKS = (*BLOCKS, 256)  # what --block may pin; the calibration choice stays in BLOCKS
ACCURACY_LEVELS = (0, 4)  # MatMulNBits compute: 0 float activations, 4 int8 activations
POLYS = ("float", "int16", "int8")
METHODS = ("minmax", "percentile", "entropy", "interval")
# Auto keeps nothing slower than fp32 at batch 1 (this cap), within the resolution of the
# measurement: a median ratio of the interleaved rounds up to LATENCY_TIE over the cap is a
# tie (two identical graphs read 0.99-1.01 on a loaded 2-core machine), unless even the
# fastest tenth of the rounds (``ratio_p10``) is over the cap: then it is slower.
MAX_LATENCY_RATIO = 1.0
LATENCY_TIE = 0.03


@dataclass(frozen=True)
class QuantPolicy:
    """How to quantize one model (and its derivative companion, identically).

    mode
        ``w8``: int8 weights behind ``DequantizeLinear``, float activations (the
        default int8 form: no integer kernel runs, so no CPU can overflow);
        ``dynamic``: activations quantized at run time to uint8, weights 7-bit
        (``reduce_range``, so the x86 u8 x s8 pair sums cannot saturate);
        ``static``: QDQ with calibrated activation ranges (8-bit activations with
        7-bit weights, or 16-bit activations); ``fp16``: half precision;
        ``auto``: try the candidates of ``auto_candidates`` and keep the smallest,
        then fastest, that passes, is smaller than fp32 and within the latency cap.
    poly
        The Horner chain: ``float`` (left unquantized), ``int16`` (16-bit
        activations), ``int8`` (naive, kept for comparison). Static mode only;
        the other modes never touch Mul/Add, so there it is always float.
    method
        Activation calibration for static mode; ``interval`` bounds the chain's
        intermediates from the coefficients and the domain guard instead of data.
    block
        ``nb8``/``nb4``: the block size along K (``PINNED_BLOCKS``); 0 chooses it from
        the calibration error (``quantize.nbits.choose_block``). ``auto`` passes a
        pinned block to its MatMulNBits candidates.
    accuracy_level
        ``nb8``/``nb4``: 0 computes in float with the dequantized weights; 4 lets
        onnxruntime quantize each activation block to int8 at run time (faster,
        one more rounding: judged like the rest, never loosened). None: 4 for an
        explicit ``nb8``/``nb4``, both for ``auto`` (which keeps whichever passes and is
        faster); a pinned level is the only one auto tries.
    equalize
        Cross-layer equalization of every Gemm input before int8 (see
        ``quantize.equalize``); off only to measure what onnxruntime does alone.
    """

    mode: str = "auto"
    poly: str = "float"
    method: str = "minmax"
    per_channel: bool = True
    equalize: bool = True
    block: int = 0
    accuracy_level: int | None = None

    def __post_init__(self) -> None:
        for name, allowed in (("mode", MODES), ("poly", POLYS), ("method", METHODS)):
            value = getattr(self, name)
            if value not in allowed:
                flag = "chain-precision" if name == "poly" else name
                raise InputError(f"--{flag} {value!r}: choose from {', '.join(allowed)}")
        if self.block not in (0, *PINNED_BLOCKS):
            blocks = ", ".join(map(str, PINNED_BLOCKS))
            raise InputError(f"--block {self.block}: choose {blocks} (or 0: from calibration)")
        if self.accuracy_level not in (None, *ACCURACY_LEVELS):
            raise InputError(f"--accuracy-level {self.accuracy_level}: choose 0 or 4")
        pinned = "--block" if self.block else None
        pinned = pinned or ("--accuracy-level" if self.accuracy_level is not None else None)
        if pinned and self.mode not in (*NBITS, "auto"):
            raise InputError(
                f"{pinned} needs --mode nb8, nb4 or auto: {self.mode} has no MatMulNBits blocks"
            )
        if self.mode in NBITS and self.accuracy_level is None:
            object.__setattr__(self, "accuracy_level", 4)  # int8 compute, the fast path
        if self.mode not in ("static", "auto") and self.poly != "float":
            raise InputError(
                f"--chain-precision {self.poly} needs --mode static: {self.mode} only "
                "quantizes the linear layers, the Horner chain stays float"
            )

    @property
    def precision(self) -> str:
        """The ``cr_edge.precision`` this policy produces (the tolerance row it is judged by)."""
        return "fp16" if self.mode == "fp16" else "int8"

    @property
    def tag(self) -> str:
        """What the model is, for its file name: ``model.<tag>.onnx``."""
        if self.mode in ("fp16", "w8", *NBITS):
            return self.mode
        return "a16w8" if self.poly == "int16" else "a8w7"

    @property
    def label(self) -> str:
        if self.mode in ("fp16", "w8"):
            name = self.mode
        elif self.mode == "dynamic":
            name = "dynamic"
        elif self.mode in NBITS:
            block = f"/b{self.block}" if self.block else ""
            return f"{self.mode}/l{self.accuracy_level}{block}"
        else:
            name = f"static/{self.poly}/{self.method}"
        return name if self.equalize or self.mode == "fp16" else f"{name}/no-eq"

    def to_json(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class QuantConfig:
    """One ``quantize`` run: the policy, where it writes, and what it must achieve.

    ``require``: fail (exit 1) when ``--mode auto`` keeps fp32 rather than returning
    with no quantized model. ``max_latency_ratio``: auto's cap against fp32 at batch 1.
    """

    out: Path
    policy: QuantPolicy = field(default_factory=QuantPolicy)
    calib: Path | None = None
    ort_format: bool = False
    require: bool = False
    max_latency_ratio: float = MAX_LATENCY_RATIO

    def __post_init__(self) -> None:
        if not self.max_latency_ratio > 0:
            raise InputError(f"latency cap {self.max_latency_ratio}: must be > 0")
        out = Path(self.out)
        if out.exists() and not out.is_dir():
            raise InputError(f"--out {out}: exists and is not a folder; give a folder")
        object.__setattr__(self, "out", out)


def auto_candidates(base: QuantPolicy) -> list[QuantPolicy]:
    """What ``--mode auto`` tries, on one scale; the naive int8 chain is measured for comparison.

    ``per_channel`` and ``method`` come from the user.
    """
    plain = replace(base, block=0, accuracy_level=None)  # no MatMulNBits: nothing to pin
    levels = (4, 0) if base.accuracy_level is None else (base.accuracy_level,)
    return [
        replace(plain, mode="w8", poly="float"),
        replace(plain, mode="dynamic", poly="float"),
        replace(plain, mode="static", poly="float"),
        replace(plain, mode="static", poly="int16"),
        replace(plain, mode="static", poly="int8", equalize=False),  # onnxruntime alone
        replace(plain, mode="fp16", poly="float"),
        # MatMulNBits: int8 compute (level 4) and float compute (0), whichever passes and
        # is faster (same size, so auto's order picks the faster); 4-bit for the record.
        # A pinned block or level (--block, --accuracy-level) is the only one tried.
        *(replace(base, mode="nb8", poly="float", accuracy_level=lv) for lv in levels),
        replace(base, mode="nb4", poly="float", accuracy_level=levels[0]),
    ]
