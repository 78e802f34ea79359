"""What each CPU family computes for onnxruntime's ``MatMulNBits``, so the judge checks the worst.

``integer_eval.nbits_matmul`` computes accuracy level 4 as this machine's kernel does
(AVX-512 VNNI ``vpdpbusd``): activations quantized per block to int8 (``|code| <= 127``,
MLAS's ``QuantizeARow_CompInt8``), then each block's dot product ``sum qa * code`` in
exact 32-bit integers, scaled in float. A verdict must hold on the other x86 family and
on ARM64; onnxruntime 1.32's MLAS runs level 4 there as follows.

x86 AVX2 without VNNI (no saturation, proved): the 8-bit kernel multiplies the *raw*
codes (``0..255``, the zero point applied afterwards through a float block sum) by the
int8 activations with ``vpmaddubsw``, whose int16 pair sums saturate. MLAS masks the
odd and even bytes of the codes apart before it (``accumulate_q8_blklen64_r2c1blk1_avx2``
in ``onnxruntime/core/mlas/lib/sqnbitgemm_kernel_avx2_int8_blklen64.h``: "2 x i8 x i8 may
be larger than i16", masks ``0x00ff00ff``/``0xff00ff00``), so each int16 lane holds ONE
product, ``|code * qa| <= 255 * 127 = 32385 <= 32767``, widened by ``vpmaddwd`` to int32.
The 4-bit kernel sums two pairs per lane (``vpmaddubsw`` then ``vphaddw``):
``4 * 15 * 127 = 7620``. Hence ``AVX2_LANE_PRODUCTS`` and ``avx2_lane_max``: no lane
can leave int16, so AVX2 computes the exact way's integers. A pair of 8-bit products
would reach ``2 * 255 * 127 = 64770``; the masking is what the bound rests on. Measured
(onnxruntime 1.32 run under ``qemu-x86_64 -cpu Haswell``: AVX2, no VNNI, no AVX-512):
codes 243..255 against activations near 1, blocks 16..256, batch 1 and 16, every output
within 1.2e-4 of the exact way (outputs near 400), where pair sums would lose half of
every block (``tests/test_quantize_nbits_isa.py`` repeats it on a case worked by hand).
AVX-512 without VNNI (Skylake-X) has its own kernels, neither read nor run here (qemu
emulates no AVX-512).

ARM64 with dotprod (ARMv8.2-A+, e.g. Neoverse-N1) or i8mm: ``udot`` on ``qa + 128`` or
``usdot``, exact 32-bit sums; 8-bit blocks measured on the emulated device
(``cr_edge.devices.emulated``, neoverse-n1 and max) within 4.6e-4 of the exact way.
4-bit blocks of 32 or more with ``K`` a multiple of the block go through KleidiAI
(``UseKleidiAI`` in ``sqnbitgemm_kernel_neon.cpp``), whose activations are quantized
per row (``kai_lhs_quant_pack_qai8dxp_f32``), not per block: measured off both the
per-block and the float result (0.12 where level 4 and level 0 differ by 0.10). That
kernel is not emulated: such a node leaves the verdict unjudged for ARM64.

ARM64 without dotprod (ARMv8.0-A: Cortex-A53/A72): MLAS has no int8 kernel there and
computes the node in float with the dequantized weights, level 0's result whatever
the attribute says (measured on emulated cortex-a72: within 4.6e-4 of level 0, 0.11
from level 4). The judge computes that way too (``no-dotprod``).
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx

from cr_edge.quantize.kernels import INT16_MAX

INT8_LEVEL = 4  # MatMulNBits accuracy_level whose kernels multiply int8 activations
ACTIVATION_CODE_MAX = 127  # QuantizeARow_CompInt8: symmetric codes, scale max|a| / 127
# Products summed into one int16 lane of MLAS's AVX2 kernel before widening, per weight bits
AVX2_LANE_PRODUCTS = {8: 1, 4: 4}
KLEIDIAI_BITS, KLEIDIAI_BLOCK = 4, 32  # UseKleidiAI: 4-bit, BlkLen % 32 == 0, K % BlkLen == 0


@dataclass(frozen=True)
class NbitsNode:
    """One ``MatMulNBits`` node's kernel choice: bits, block, accuracy level and ``K``."""

    name: str
    bits: int
    block: int
    level: int
    k: int

    @property
    def int8(self) -> bool:
        """Whether onnxruntime runs it on an int8 kernel where the CPU has one."""
        return self.level == INT8_LEVEL

    @property
    def kleidiai(self) -> bool:
        """Whether ARM64 with dotprod runs it through KleidiAI (per-row activations)."""
        return (
            self.int8
            and self.bits == KLEIDIAI_BITS
            and self.block % KLEIDIAI_BLOCK == 0
            and self.k % self.block == 0
        )


def nbits_nodes(model: onnx.ModelProto) -> list[NbitsNode]:
    """Every ``com.microsoft.MatMulNBits`` of ``model``'s main graph."""
    out = []
    for node in model.graph.node:
        if node.op_type != "MatMulNBits" or node.domain != "com.microsoft":
            continue
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        out.append(
            NbitsNode(
                node.name or node.output[0],
                int(attrs.get("bits", 4)),
                int(attrs.get("block_size", 0)),
                int(attrs.get("accuracy_level", 0) or 0),
                int(attrs.get("K", 0)),
            )
        )
    return out


def avx2_lane_max(bits: int) -> int | None:
    """The largest ``|int16 lane|`` of MLAS's AVX2 level-4 kernel for ``bits``-bit codes
    (None: a layout not verified): products per lane x largest code x largest activation."""
    products = AVX2_LANE_PRODUCTS.get(bits)
    return None if products is None else products * (2**bits - 1) * ACTIVATION_CODE_MAX


def avx2_refusal(nodes: list[NbitsNode]) -> str | None:
    """Why the exact way cannot stand for AVX2 on ``nodes`` (None: no lane can saturate)."""
    for node in nodes:
        if not node.int8:
            continue
        top = avx2_lane_max(node.bits)
        if top is None:
            bits = f"{node.bits}-bit codes"
            return f"MatMulNBits {node.name!r}: the AVX2 kernel for {bits} is not verified"
        if top > INT16_MAX:
            return f"MatMulNBits {node.name!r}: an int16 lane can reach {top} > {INT16_MAX}"
    return None


def note(nodes: list[NbitsNode]) -> str:
    """What the judge assumes for ``nodes`` (all of one model), true for the candidate."""
    int8 = [n for n in nodes if n.int8]
    if not int8:
        return "MatMulNBits at accuracy level 0 computes in float on every CPU: no integer product"
    bits = sorted({n.bits for n in int8})
    bounds = ", ".join(f"{b}-bit {avx2_lane_max(b)}" for b in bits)
    return (
        "MatMulNBits at level 4 (int8 activations x int8 weights per block): the exact way is "
        f"what AVX2, VNNI and ARM64 dotprod/i8mm compute (AVX2 int16 lanes reach at most "
        f"{bounds} <= {INT16_MAX}); 'no-dotprod' is the float kernel of ARMv8.0 cores"
    )
