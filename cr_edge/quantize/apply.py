"""Apply one policy to one graph with onnxruntime's quantizers (no hand-written quantizer).

The same function quantizes the primal model and its derivative companion, so that
the companion's JVP measures the precision that is actually deployed.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnxruntime.quantization import (
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_dynamic,
    quantize_static,
)
from onnxruntime.transformers.float16 import convert_float_to_float16

from cr_edge.errors import ExportError
from cr_edge.quantize.calibration import NpzReader, fixed_batch
from cr_edge.quantize.companion import derivative_only, tie_weights_
from cr_edge.quantize.equalize import Scales, equalize
from cr_edge.quantize.graph import LINEAR, gemm_to_matmul, horner_chain
from cr_edge.quantize.interval import overrides as interval_overrides
from cr_edge.quantize.policy import QuantPolicy
from cr_edge.quiet import quiet

CALIBRATION = {
    "minmax": CalibrationMethod.MinMax,
    "percentile": CalibrationMethod.Percentile,
    "entropy": CalibrationMethod.Entropy,
    "interval": CalibrationMethod.MinMax,  # the chain's ranges are then overridden
}
# Percentile keeps 99.999% of each activation: clipping the rare extreme hurts a
# polynomial more than a ReLU (p(z) grows like z^3), so it is conservative.
CALIB_OPTIONS = {"CalibPercentile": 99.999}


def apply_policy(
    model: onnx.ModelProto,
    policy: QuantPolicy,
    feeds: dict[str, np.ndarray],
    scales: Scales | None = None,
) -> tuple[onnx.ModelProto, Scales]:
    """``model`` quantized as ``policy`` says (static: calibrated on ``feeds``), and the
    equalization scales used; pass the primal's ``scales`` when quantizing its companion.
    """
    if policy.mode == "fp16":
        return _fp16(model), {}
    scales = dict(scales or {})
    if policy.equalize:
        model, scales = equalize(model, feeds, scales)
    if policy.mode == "dynamic":
        model = gemm_to_matmul(model)
    derivative = derivative_only(model)
    # Horner chain in float: exclude its nodes so only the linear layers get QDQ.
    chain = set(horner_chain(model).nodes) if policy.poly == "float" else set()
    exclude = sorted(chain | derivative)
    try:
        with quiet(""), tempfile.TemporaryDirectory(prefix="cr-edge-quant-") as tmp:
            src, dst = Path(tmp) / "in.onnx", Path(tmp) / "out.onnx"
            onnx.save(model, src)
            if policy.mode == "dynamic":
                quantize_dynamic(
                    src,
                    dst,
                    op_types_to_quantize=["MatMul", "Conv"],
                    per_channel=policy.per_channel,
                    weight_type=QuantType.QInt8,
                    nodes_to_exclude=exclude,
                )
            else:
                _static(src, dst, model, policy, feeds, exclude)
            quantized = onnx.load(dst)
    except (ValueError, RuntimeError, KeyError, onnx.checker.ValidationError) as e:
        raise ExportError(f"onnxruntime.quantization refused {policy.label}: {e}") from e
    if derivative:
        tie_weights_(quantized, derivative)
    return quantized, scales


def _static(
    src: Path,
    dst: Path,
    model: onnx.ModelProto,
    policy: QuantPolicy,
    feeds: dict[str, np.ndarray],
    exclude: list[str],
) -> None:
    # int16: 16-bit activations everywhere (A16W8); int8: everything 8-bit (naive).
    activation = QuantType.QInt16 if policy.poly == "int16" else QuantType.QUInt8
    options = {
        "WeightSymmetric": True,
        "ActivationSymmetric": policy.poly == "int16",
        **CALIB_OPTIONS,
    }
    if policy.poly == "float":
        # A linear layer's output feeds the float chain (or is the logits): rounding it
        # to 8 bits only adds error, and clips every logit the calibration never reached.
        options["OpTypesToExcludeOutputQuantization"] = list(LINEAR)
    if policy.method == "interval":
        options["TensorQuantOverrides"] = interval_overrides(model, feeds, set(exclude))
    quantize_static(
        src,
        dst,
        NpzReader(feeds, fixed_batch(model)),
        quant_format=QuantFormat.QDQ,
        per_channel=policy.per_channel,
        activation_type=activation,
        weight_type=QuantType.QInt8,
        nodes_to_exclude=exclude,
        calibrate_method=CALIBRATION[policy.method],
        extra_options=options,
    )


def _fp16(model: onnx.ModelProto) -> onnx.ModelProto:
    # keep_io_types: fp32 in and out, so the same oracle and the same callers work.
    return convert_float_to_float16(model, keep_io_types=True, disable_shape_infer=False)
