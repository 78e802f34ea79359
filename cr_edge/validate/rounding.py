"""The float32 rounding error of an exported graph: the graph against its own float64 copy.

A fixed atol of 1e-5 is a guess about a model. A float32 Horner chain commits up to
``gamma_2n * sum_k |a_k| |z|^k`` (Higham 5.1), so a net trained without DREG, whose
coefficients are large and whose terms cancel, misses 1e-5 while being exactly the model
that was trained. Here the same graph runs twice in onnxruntime, as exported and with
every float tensor widened to float64, on the oracle's inputs: the difference is the
graph's own rounding error on exactly those inputs, for outputs and for the companion's
JVPs, measured rather than bounded (a worst-case bound across layers is orders looser).
onnxruntime's CPU provider has no float64 ``Conv`` or ``AveragePool``: a conv net's wide
copy then runs in onnx's reference evaluator (numpy, float64 throughout; seconds for an
oracle of a thousand MNIST-1D samples). Without it a conv net got no measured error, fell
back to the 1e-5 floor, and a correct export with logits in the hundreds failed its own
check (error 3.8e-5, 2.2x inside ``ROUNDING_SAFETY x`` the measured rounding).

Without a companion, derivatives are judged by float32 central finite differences
(``differences.richardson``), whose error is not the graph's rounding alone: the step
also misses where a kink (the domain guard's clip, a ReLU) lies within it, and a kink
much closer to ``x`` than the step passes the estimate's own spread test unnoticed. On
MNIST-1D's depth-1 w512 CR net one sample's estimate was off by 2.5e-3 (spread 1.2e-4)
while float32 rounding explained 4e-5 of it. So the estimate is measured per sample
against the float64 copy's derivative (Richardson at float64's step, ~800x finer):
``fd_rounding`` is the float32 estimate's gap to the float64 estimate at the same step,
``fd_step`` that float64 estimate's gap to the float64 derivative (the step's own error,
kinks included). ``tolerances`` turns them into the bound and the samples skipped.
numpy, onnx, onnx-ir and onnxruntime only.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
from onnx.reference import ReferenceEvaluator
from onnxruntime.capi.onnxruntime_pybind11_state import NotImplemented as NoKernel

from cr_edge.validate.differences import (
    finite_difference_steps,
    input_scale,
    relative,
    richardson,
)

_TINY = float(np.finfo(np.float32).eps)


@dataclass(frozen=True, eq=False)
class RoundingError:
    """Measured float32-vs-float64 differences of one export on the oracle's inputs."""

    output_abs: float  # max |y32 - y64| over the primal's and the companion's y
    jvp_rel: float | None  # max per-sample ||jvp32 - jvp64|| / ||jvp64||; None: no companion
    # Per oracle sample, float32 finite differences at validate's step (None: not measured):
    # ||R32(h) - R64(h)|| / ||R64(h)|| (rounding) and ||R64(h) - J64 v|| / ||J64 v|| (the step's
    # own error, large where a kink lies within the step), J64 v from float64's own step.
    fd_rounding: np.ndarray | None = field(default=None, repr=False)
    fd_step: np.ndarray | None = field(default=None, repr=False)


def float64_copy(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with every float32 value, initializer, constant and cast widened to float64."""
    graph_model = ir.from_proto(model)
    for value in _values(graph_model.graph):
        if value.type is not None and value.type.dtype == ir.DataType.FLOAT:
            value.type = ir.TensorType(ir.DataType.DOUBLE)
        const = value.const_value
        if const is not None and const.dtype == ir.DataType.FLOAT:
            value.const_value = ir.tensor(const.numpy().astype(np.float64), name=const.name)
    for node in graph_model.graph.all_nodes():
        if node.op_type == "Cast" and node.attributes["to"].as_int() == ir.DataType.FLOAT:
            node.attributes["to"] = ir.AttrInt64("to", ir.DataType.DOUBLE)
        if node.op_type == "Constant" and "value" in node.attributes:
            tensor = node.attributes["value"].as_tensor()
            if tensor.dtype == ir.DataType.FLOAT:
                widened = ir.tensor(tensor.numpy().astype(np.float64), name=tensor.name)
                node.attributes["value"] = ir.AttrTensor("value", widened)
    return ir.to_proto(graph_model)


def measure(
    primal: bytes, companion: bytes | None, x: np.ndarray, v: np.ndarray | None
) -> RoundingError:
    """Run ``primal`` (and ``companion``, inputs ``x, v``) in float32 and float64 on the CPU.

    Finite differences are measured too (``fd_rounding``, ``fd_step``) when the float64
    copy runs in onnxruntime. Not in onnx's reference evaluator (a conv net): its float64
    run of a GELU conv net is off by ~1e-7 from exact (some kernel rounds to float32), so
    its derivative at float64's step was off by 1e-3, and its eighteen evaluations per
    sample took minutes; such a model keeps the policy's finite-difference floor.
    """
    y32, y64 = _both(primal, {"x": x})
    output_abs = _max_abs(y32[0], y64[0])
    jvp_rel = None
    if companion is not None and v is not None:
        c32, c64 = _both(companion, {"x": x, "v": v.astype(x.dtype)})
        output_abs = max(output_abs, _max_abs(c32[0], c64[0]))
        jvp_rel = float(np.max(relative(c32[1], c64[1])))
    fd_rounding = fd_step = None
    if v is not None and v.shape == x.shape and _runs_wide(primal):
        fd_rounding, fd_step = _finite_differences(primal, x, v)
    return RoundingError(output_abs, jvp_rel, fd_rounding, fd_step)


def _finite_differences(primal: bytes, x: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, ...]:
    """Per sample: float32 vs float64 estimate at validate's fp32 step, and the float64
    estimate vs the float64 derivative (float64's own, ~800x finer step)."""
    model = onnx.load_model_from_string(primal)
    wide = float64_copy(model).SerializeToString()
    steps = finite_difference_steps(x, v, "fp32", input_scale(x))
    x32, v32 = x.astype(np.float32), v.astype(np.float32)
    x64, v64 = x.astype(np.float64), v.astype(np.float64)
    r32, _ = richardson(lambda pts: _run(primal, {"x": pts})[0], x32, v32, steps)
    r64, _ = richardson(lambda pts: _wide_run(wide, {"x": pts})[0], x64, v64, steps)
    exact, _ = richardson(
        lambda pts: _wide_run(wide, {"x": pts})[0],
        x64,
        v64,
        finite_difference_steps(x, v, "fp64", input_scale(x)),
    )
    return relative(r32, r64), relative(r64, exact)


def _runs_wide(primal: bytes) -> bool:
    """Whether onnxruntime has a float64 kernel for every op of ``primal``'s float64 copy."""
    wide = float64_copy(onnx.load_model_from_string(primal)).SerializeToString()
    try:
        _session(wide)
    except NoKernel:
        return False
    return True


def _both(data: bytes, feeds: dict[str, np.ndarray]) -> tuple[list, list]:
    model = onnx.load_model_from_string(data)
    wide = float64_copy(model).SerializeToString()
    narrow_feeds = {k: a.astype(np.float32) for k, a in feeds.items()}
    wide_feeds = {k: a.astype(np.float64) for k, a in feeds.items()}
    return _run(data, narrow_feeds), _wide_run(wide, wide_feeds)


def _wide_run(wide: bytes, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    try:
        return _run(wide, feeds)
    except NoKernel:  # an op without a float64 kernel in onnxruntime (Conv, AveragePool)
        return ReferenceEvaluator(wide).run(None, feeds)


def _session(data: bytes) -> ort.InferenceSession:
    options = ort.SessionOptions()
    # Graph rewrites (fusions) may differ between the two widths; judge the graph as written.
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])


def _run(data: bytes, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    session = _session(data)
    names = [i.name for i in session.get_inputs()]
    return session.run(None, {name: feeds[name] for name in names})


def _max_abs(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64))))


def _values(graph: ir.Graph):
    yield from graph.inputs
    yield from graph.outputs
    yield from graph.initializers.values()
    for node in graph.all_nodes():
        yield from node.outputs
