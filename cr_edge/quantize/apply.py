"""Apply one policy to one graph with onnxruntime's quantizers (no hand-written quantizer).

Each policy is a handler in ``POLICIES`` keyed by its mode (torchao's
``quantize_(model, config)`` registry). The same function quantizes the primal model
and its derivative companion, so that the companion's JVP measures the precision
that is actually deployed.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
from onnx_ir.passes.common import TopologicalSortPass
from onnxruntime.quantization import (
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_dynamic,
    quantize_static,
)
from onnxruntime.transformers.float16 import convert_float_to_float16

from cr_edge.errors import ExportError, InputError
from cr_edge.quantize.calibration import NpzReader
from cr_edge.quantize.companion import derivative_only, tie_weights
from cr_edge.quantize.embedding import quantize_embeddings
from cr_edge.quantize.equalize import Scales, equalize
from cr_edge.quantize.gemm_to_matmul import gemm_to_matmul
from cr_edge.quantize.graph import LINEAR, horner_chain
from cr_edge.quantize.interval import overrides as interval_overrides
from cr_edge.quantize.measure import as_session, probe, session
from cr_edge.quantize.nbits import quantize_nbits
from cr_edge.quantize.policy import NBITS, QuantPolicy
from cr_edge.quantize.stale_types import ForgetStaleTypes
from cr_edge.quantize.weight_only import WeightOnlyInt8
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
# After the fp16 converter: its stale value types first, then the order of its Casts.
FP16_REPAIR = ir.passes.PassManager([ForgetStaleTypes(), TopologicalSortPass()])


Handler = Callable[[onnx.ModelProto, QuantPolicy, dict[str, np.ndarray]], onnx.ModelProto]
POLICIES: dict[str, Handler] = {}  # mode -> handler, filled by ``register``


def register(mode: str) -> Callable[[Handler], Handler]:
    """Add a policy handler under ``mode`` (a ``QuantPolicy.mode``): dispatch, not branches."""

    def add(handler: Handler) -> Handler:
        POLICIES[mode] = handler
        return handler

    return add


def apply_policy(
    model: onnx.ModelProto,
    policy: QuantPolicy,
    feeds: dict[str, np.ndarray],
    scales: Scales | None = None,
) -> tuple[onnx.ModelProto, Scales]:
    """``model`` quantized as ``policy`` says (static: calibrated on ``feeds``), and the
    equalization scales used; pass the primal's ``scales`` when quantizing its companion.
    """
    if policy.mode not in POLICIES:
        raise InputError(f"--mode {policy.mode!r}: no such policy ({', '.join(POLICIES)})")
    scales = dict(scales or {})
    if policy.mode != "fp16":  # a text model's table: block-quantized rows (quantize.embedding)
        model = quantize_embeddings(model, NBITS.get(policy.mode, 8))
    if policy.equalize and policy.mode not in ("fp16", "w8"):  # w8: one scale per column
        model, scales = equalize(model, feeds, scales)
    return POLICIES[policy.mode](model, policy, feeds), scales


@register("fp16")
def _fp16(model: onnx.ModelProto, policy: QuantPolicy, feeds: dict) -> onnx.ModelProto:
    # keep_io_types: fp32 in and out, so the same oracle and the same callers work.
    half = convert_float_to_float16(model, keep_io_types=True, disable_shape_infer=False)
    # Around the ops it keeps fp32 (the domain guard's Max/Min) the converter appends its
    # Casts out of topological order and leaves those tensors' value_info typed fp16 where
    # a Cast now makes them fp32: onnxruntime runs it, shape inference (profile's FLOP
    # count) refused it. So the stale types are dropped and the graph sorted again.
    irm = ir.from_proto(half)
    FP16_REPAIR(irm)
    return onnx.shape_inference.infer_shapes(ir.to_proto(irm), strict_mode=True)


@register("w8")
def _weights_only(model: onnx.ModelProto, policy: QuantPolicy, feeds: dict) -> onnx.ModelProto:
    irm = ir.from_proto(model)
    WeightOnlyInt8(_input_rms(model, feeds))(irm)
    return ir.to_proto(irm)


def _input_rms(model: onnx.ModelProto, feeds: dict) -> dict[str, np.ndarray]:
    """Per layer weight, the RMS of each input channel (axis 1; the last for a MatMul) of
    the primal-path layer that reads it, over ``feeds`` (see ``quantize.weight_only``)."""
    derivative = derivative_only(model)
    layers = {}
    for node in model.graph.node:
        if node.op_type in LINEAR and node.name not in derivative and len(node.input) > 1:
            layers.setdefault(node.input[1], node)
    if not layers or not feeds:
        return {}
    values = probe(model, sorted({n.input[0] for n in layers.values()}), feeds)
    rms = {}
    for weight, node in layers.items():
        a = values[node.input[0]].astype(np.float64)
        channel = a.ndim - 1 if node.op_type == "MatMul" else 1
        a = np.moveaxis(a, channel, 0).reshape(a.shape[channel], -1)
        rms[weight] = np.sqrt(np.square(a).mean(axis=1))
    return rms


@register("nb8")
@register("nb4")
def _nbits(model: onnx.ModelProto, policy: QuantPolicy, feeds: dict) -> onnx.ModelProto:
    return quantize_nbits(model, policy, feeds)


@register("dynamic")
def _dynamic(model: onnx.ModelProto, policy: QuantPolicy, feeds: dict) -> onnx.ModelProto:
    model = gemm_to_matmul(model)
    derivative = derivative_only(model)

    def run(src: Path, dst: Path) -> None:
        quantize_dynamic(
            src,
            dst,
            op_types_to_quantize=["MatMul", "Conv"],
            per_channel=policy.per_channel,
            reduce_range=True,  # 7-bit weights: u8 x s8 pair sums stay inside int16
            weight_type=QuantType.QInt8,
            nodes_to_exclude=sorted(derivative),
        )

    return _tied(_through_files(model, policy, run), derivative)


@register("static")
def _static_policy(model: onnx.ModelProto, policy: QuantPolicy, feeds: dict) -> onnx.ModelProto:
    derivative = derivative_only(model)
    # Horner chain in float: exclude its nodes so only the linear layers get QDQ.
    chain = set(horner_chain(model).nodes) if policy.poly == "float" else set()
    exclude = sorted(chain | derivative)

    def run(src: Path, dst: Path) -> None:
        _static(src, dst, model, policy, feeds, exclude)

    return _tied(_through_files(model, policy, run), derivative)


def _tied(quantized: onnx.ModelProto, derivative: set[str]) -> onnx.ModelProto:
    return tie_weights(quantized, derivative) if derivative else quantized


def _through_files(
    model: onnx.ModelProto, policy: QuantPolicy, run: Callable[[Path, Path], None]
) -> onnx.ModelProto:
    """onnxruntime's quantizers read and write files: ``run(src, dst)`` in a temp folder."""
    try:
        with quiet(""), tempfile.TemporaryDirectory(prefix="cr-edge-quant-") as tmp:
            src, dst = Path(tmp) / "in.onnx", Path(tmp) / "out.onnx"
            onnx.save(model, src)
            run(src, dst)
            return onnx.load(dst)
    except (ValueError, RuntimeError, KeyError, onnx.checker.ValidationError) as e:
        raise ExportError(f"onnxruntime.quantization refused {policy.label}: {e}") from e


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
        NpzReader(feeds, as_session(session(model)).fixed_batch),
        # 8-bit activations take 7-bit weights, so u8 x s8 pair sums stay inside int16
        reduce_range=policy.poly != "int16",
        quant_format=QuantFormat.QDQ,
        per_channel=policy.per_channel,
        activation_type=activation,
        weight_type=QuantType.QInt8,
        nodes_to_exclude=exclude,
        calibrate_method=CALIBRATION[policy.method],
        extra_options=options,
    )
