"""The op vocabulary: which ONNX op types make up a linear layer, a Horner chain, quantization.

One home for the sets that coverage (does an EP keep the chain?), per-op profiling
(what share of the time is the chain?) and quantization (what is the chain?) all
read, so that a new exporter op or ORT fusion is named once. Plain data, no imports.
"""

from __future__ import annotations

# What cr-edge's exporter writes.
LINEAR = ("Gemm", "MatMul", "Conv")  # the layers between activations
HORNER = frozenset({"Mul", "Add"})  # a polynomial in Horner form: ((a3 z + a2) z + a1) z + a0
# the domain guard's clamp of each polynomial's input: one scalar Clip, or Max/Min per channel
GUARD = frozenset({"Clip", "Min", "Max"})
SHAPE = ("Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose", "Identity")

# What onnxruntime makes of them: its fusions, and its quantizers' ops.
FUSED_LINEAR = frozenset({"FusedGemm", "FusedMatMul", "FusedConv"})
FUSED_CHAIN = frozenset({"Sub", "Clip"})  # a folded shift; Min+Max fused into one Clip
QUANTIZE = frozenset({"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"})
QUANTIZED_LINEAR = frozenset(
    {
        "MatMulInteger",
        "ConvInteger",
        "QLinearMatMul",
        "QLinearConv",
        "QGemm",
        "DynamicQuantizeMatMul",
        "MatMulIntegerToFloat",
        "MatMulNBits",  # onnxruntime's block-quantized weights (quantize --mode nb8/nb4)
    }
)
QUANTIZED_HORNER = frozenset({"QLinearMul", "QLinearAdd"})

# The unions the stages ask for.
ANY_LINEAR = frozenset(LINEAR) | FUSED_LINEAR | QUANTIZED_LINEAR  # a layer, however it runs
CHAIN_AT_RUN_TIME = HORNER | GUARD | FUSED_CHAIN  # the chain's nodes in a profiled session
CHAIN_ARITHMETIC = HORNER | QUANTIZED_HORNER  # the nodes an EP must keep together
