"""Torch -> ExecuTorch ``.pte`` with the XNNPACK delegate, in fp32 or int8.

The stages are ExecuTorch's own, named for what they produce: ``torch.export`` ->
(PT2E quantization) -> ``to_edge_transform_and_lower`` with the XNNPACK partitioner ->
``to_executorch``. Beside ``model.pte`` goes ``model.pte.json``: the batch contract, the
precision and how many graph nodes XNNPACK took against those left to ExecuTorch's
portable CPU kernels, so a user can see at once whether the delegate runs the model.

Dynamic batch: XNNPACK executes dynamic shapes, but ExecuTorch plans memory ahead of
time for the largest shape, so the batch axis needs an upper bound (``MAX_BATCH``); an
unbounded axis is planned at the example's size and refuses anything larger at run time.
The program is traced at that bound (see ``_cycle_rows``), and the sidecar records the
bound its memory plan actually has. Inputs are not planned: a runtime binds the
caller's buffers (which must outlive the call), as onnxruntime's IOBinding does.

int8: PT2E with the XNNPACK quantizer, symmetric per-channel int8 weights, and by default
(``scheme="dynamic"``) int8 activations quantized per call (XNNPACK's ``qd8-f32-qc8w``
kernels); ``scheme="static"`` calibrates per-tensor activation scales on the given samples
instead. Only Linear/Conv are quantized: the Horner chain stays fp32 (still inside the
delegate), because one int8 scale cannot hold a cubic's heavy-tailed range. The caller
passes the stages folded only as far as per-row weight scales allow
(``export.int8_stages``). The original fp32 weights stay attached to the converted
module as unused buffers, and ``torch.export`` would serialise them beside the int8
ones: they are dropped first. Measured by ``bench/pte_int8.py`` (60-epoch nets,
calibrated on the oracle's 462 inputs; AMD EPYC, one thread, batch 1, interleaved): max
error against the oracle in output steps (range/255; the tolerance is 3), bytes and
latency against the fp32 program. digits-cr: dynamic 2.01 steps, 0.57x, 1.11x
(p10-p90 1.10-1.11); static 4.10 steps, 0.64x, 1.18x. digits-conv (644 weights: its
program is mostly XNNPACK graph, not weights): dynamic 1.82 steps, 0.98x, 1.20x; static
3.07 steps, 1.14x, 1.29x. At these sizes the int8 program is a size trade that costs
speed (the activation quantize/convert nodes outweigh the tiny fp32 GEMMs). Before
(every fold skipped, the calibrated guard, fp32 weights kept): digits-cr static 7.4
steps at 1.47x the fp32 bytes.

A ``.pte`` has no metadata of its own, so the sidecar's ``metadata`` carries the keys
``validate`` reads from an ONNX model's ``metadata_props``: ``cr_edge.precision`` (the
tolerance row), and for int8 the output step an 8-bit per-tensor quantizer picks for
the fp32 program's output range over the calibration samples (as ``cr-edge quantize``
records it), so that an int8 program is judged by int8 tolerances, not fp32's.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from torch import Tensor, nn

from cr_edge.artifacts import atomic
from cr_edge.artifacts import metadata as schema
from cr_edge.errors import ExportError
from cr_edge.quiet import quiet
from cr_edge.runtimes.executorch import SIDECAR_FORMAT, floor_of, sidecar_of
from cr_edge.validate.tolerances import INT8_LEVELS

INSTALL_HINT = "--format executorch needs the executorch extra: pip install 'cr-edge[executorch]'"
# The largest batch a dynamic .pte accepts: memory is planned for it ahead of time, so it
# sets the size of the runtime's activation arena.
MAX_BATCH = 1024
# Nodes that run no kernel: unpacking the delegate's outputs, reading a dynamic size.
BOOKKEEPING = ("getitem", "sym_size")
_NOISY_LOGGERS = ("torchao", "torch.utils._pytree", "executorch", "torch._export")
# int8 activation schemes, as the sidecar describes them (weights: symmetric per channel)
INT8_SCHEMES = {
    "dynamic": "dynamic per-tensor activations (scale chosen per call)",
    "static": "static per-tensor activations (calibrated)",
}


@dataclass(frozen=True)
class Delegation:
    """How the lowered graph splits between XNNPACK and ExecuTorch's portable kernels."""

    subgraphs: int
    delegated: int  # nodes inside XNNPACK subgraphs
    portable: int  # operator nodes left to the portable CPU kernels
    ops: dict[str, dict[str, int]] = field(default_factory=dict)


@dataclass(frozen=True)
class PteResult:
    path: Path
    info_path: Path
    delegation: Delegation
    batch: int | None  # the fixed batch, or None for a dynamic one
    max_batch: int  # the largest batch the program's memory plan admits


def export_pte(
    module: nn.Module,
    example: Tensor,
    out_path: Path,
    int8: bool = False,
    batch: int | None = None,
    calibration: Tensor | None = None,
    scheme: str = "dynamic",
) -> PteResult:
    """Write ``out_path`` (.pte) and its sidecar ``<out_path>.json``; see the module docstring.

    ``example`` fixes dtype and sample shape (and the batch when ``batch`` is given);
    ``calibration`` (default: ``example``) sets the int8 output step and, for the static
    ``scheme``, the activation ranges.
    """
    if int8 and scheme not in INT8_SCHEMES:
        raise ExportError(f"int8 scheme {scheme!r}: choose from {', '.join(INT8_SCHEMES)}")
    out_path = Path(out_path)
    if batch is not None and example.shape[0] != batch:
        raise ExportError(
            f"--fixed-batch {batch}: the example input holds {example.shape[0]} samples"
        )
    dynamic = None if batch else ({0: torch.export.Dim("batch", min=1, max=MAX_BATCH)},)
    trace = example if batch else _cycle_rows(example, MAX_BATCH)
    samples = example if calibration is None else calibration
    metadata = schema.props(schema=schema.SCHEMA_VERSION, precision="int8" if int8 else "fp32")
    with quiet(*_NOISY_LOGGERS):
        et = _import_executorch()
        if int8:
            metadata.update(schema.props(output_step=_output_step(module, samples)))
            module = _quantize(et, module, samples, scheme)
        try:
            program = torch.export.export(module, (trace,), dynamic_shapes=dynamic)
            edge = et.to_edge_transform_and_lower(program, partitioner=[et.XnnpackPartitioner()])
            delegation = _delegation(et, edge)
            lowered = edge.to_executorch(_backend_config(et))
        except Exception as e:  # export and lowering raise many types; all mean the same here
            raise ExportError(f"{out_path}: ExecuTorch lowering failed: {_first_line(e)}") from e
    result = PteResult(out_path, sidecar_of(out_path), delegation, batch, _planned(lowered))
    atomic.write_bytes(out_path, lowered.buffer)
    atomic.write_json(result.info_path, _info(result, metadata, samples, example, scheme))
    return result


class _Floor(nn.Module):
    """A program's outputs as zeros, its input taken: the call with no arithmetic in it."""

    def __init__(self, outputs: list[tuple[tuple[int, ...], torch.dtype]]) -> None:
        super().__init__()
        self.outputs = outputs  # per output: its shape past the batch axis, its dtype

    def forward(self, x: Tensor) -> Tensor | tuple[Tensor, ...]:
        zeros = tuple(torch.zeros((x.shape[0], *s), dtype=d) for s, d in self.outputs)
        return zeros[0] if len(zeros) == 1 else zeros


def export_floor(module: nn.Module, example: Tensor, program: Path, batch: int | None) -> PteResult:
    """Write ``module``'s dispatch floor beside ``program``: ``floor_of(program)``.

    ``cr-edge profile`` times it interleaved with the program (its "floor" column, as the
    arithmetic-free ONNX graph it builds for onnxruntime rows): same input, same output
    shapes and batch contract, nothing computed. Building it needs torch's exporter, which
    a device running ``profile`` lacks, so export writes it.
    """
    with torch.no_grad():
        y = module(example)
    ys = y if isinstance(y, tuple) else (y,)
    floor = _Floor([(tuple(t.shape[1:]), t.dtype) for t in ys])
    return export_pte(floor, example, floor_of(Path(program)), False, batch)


def _backend_config(et: Any) -> Any:
    """Inputs left to the caller, not planned into the program's arena.

    A planned input is copied in on every call; an unplanned one is the caller's buffer,
    bound once (as onnxruntime's IOBinding binds one) and read by every execute after.
    Outputs stay planned: the runtime hands back views of them.
    """
    return et.ExecutorchBackendConfig(
        memory_planning_pass=et.MemoryPlanningPass(alloc_graph_input=False)
    )


def _output_step(module: nn.Module, samples: Tensor) -> float:
    """The fp32 output range over ``samples`` in ``INT8_LEVELS`` steps (first output)."""
    with torch.no_grad():
        y = module(samples)
    y = y[0] if isinstance(y, tuple) else y
    return float(y.max() - y.min()) / INT8_LEVELS


def _cycle_rows(x: Tensor, n: int) -> Tensor:
    """``n`` samples taken from ``x`` in turn.

    A dynamic program is traced at its largest batch: XNNPACK's channels-last pass re-runs
    torch's conv shape function, whose backend choice (NNPACK needs ``batch >= 16``) is
    decided at the trace's batch and narrows the batch range to match. Traced at 2, the
    memory plan admitted 15 samples; traced at ``MAX_BATCH``, all of 1..MAX_BATCH run.
    """
    return x[torch.arange(n) % x.shape[0]].contiguous()


def _planned(lowered: Any) -> int:
    """The batch the memory plan was made for: the input's leading size in the program."""
    plan = lowered.executorch_program.execution_plan[0]
    return int(plan.values[plan.inputs[0]].val.sizes[0])


def _import_executorch() -> Any:
    """ExecuTorch's entry points in one namespace, or the line that says what to install."""
    try:
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
        from executorch.backends.xnnpack.quantizer import xnnpack_quantizer
        from executorch.devtools.backend_debug import get_delegation_info
        from executorch.exir import ExecutorchBackendConfig, to_edge_transform_and_lower
        from executorch.exir.passes import MemoryPlanningPass
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    except ImportError as e:
        raise ExportError(INSTALL_HINT) from e
    return SimpleNamespace(
        XnnpackPartitioner=XnnpackPartitioner,
        XNNPACKQuantizer=xnnpack_quantizer.XNNPACKQuantizer,
        quant_config=xnnpack_quantizer.get_symmetric_quantization_config,
        get_delegation_info=get_delegation_info,
        to_edge_transform_and_lower=to_edge_transform_and_lower,
        ExecutorchBackendConfig=ExecutorchBackendConfig,
        MemoryPlanningPass=MemoryPlanningPass,
        prepare_pt2e=prepare_pt2e,
        convert_pt2e=convert_pt2e,
    )


def _quantize(et: Any, module: nn.Module, samples: Tensor, scheme: str) -> nn.Module:
    """PT2E int8: annotate Linear/Conv for XNNPACK, observe ``samples``, convert.

    Observation runs on a dynamic-batch graph whatever the final batch, so that any number
    of samples can be fed; the converted module is exported again with the final shapes.
    """
    config = et.quant_config(is_per_channel=True, is_dynamic=scheme == "dynamic")
    quantizer = et.XNNPACKQuantizer()
    quantizer.set_operator_type(torch.ops.aten.linear.default, config)
    quantizer.set_operator_type(torch.ops.aten.conv1d.default, config)
    quantizer.set_operator_type(torch.ops.aten.conv2d.default, config)
    observe = ({0: torch.export.Dim("batch", min=1, max=MAX_BATCH)},)
    try:
        trace = _cycle_rows(samples, MAX_BATCH)
        graph = torch.export.export(module, (trace,), dynamic_shapes=observe).module()
        prepared = et.prepare_pt2e(graph, quantizer)
        with torch.no_grad():
            for chunk in samples.split(MAX_BATCH):
                prepared(chunk)
        return _without_unused_constants(et.convert_pt2e(prepared))
    except Exception as e:  # PT2E raises many types; all mean the same here
        raise ExportError(f"int8 quantization for ExecuTorch failed: {_first_line(e)}") from e


def _without_unused_constants(module: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """``module`` without the parameters and buffers its graph no longer reads.

    ``convert_pt2e`` reads the int8 weights from new constants and leaves the fp32 ones
    attached; exported again, those are program constants the runtime never reads (on
    digits-cr they made the int8 program 1.47x the fp32 one's bytes).
    """
    read = {str(n.target) for n in module.graph.nodes if n.op == "get_attr"}
    named = [*module.named_parameters(), *module.named_buffers()]
    for name in {n for n, _ in named if n not in read}:
        owner, _, leaf = name.rpartition(".")
        delattr(module.get_submodule(owner) if owner else module, leaf)
    return module


def _delegation(et: Any, edge: Any) -> Delegation:
    """Per op type, nodes inside XNNPACK subgraphs against nodes left outside them."""
    info = et.get_delegation_info(edge.exported_program().graph_module)
    ops = {
        name: {"delegated": b.delegated, "portable": b.non_delegated}
        for name, b in sorted(info.delegation_by_operator.items())
        if name not in BOOKKEEPING
    }
    portable = sum(v["portable"] for v in ops.values())
    return Delegation(info.num_delegated_subgraphs, info.num_delegated_nodes, portable, ops)


def _info(
    result: PteResult, meta: dict[str, str], samples: Tensor, example: Tensor, scheme: str
) -> dict[str, Any]:
    """The sidecar: what a runtime needs to know before it feeds the program."""
    batch = result.batch
    precision = schema.read(meta).precision
    int8 = precision == "int8"
    info: dict[str, Any] = {
        "format": SIDECAR_FORMAT,
        "executorch_version": metadata.version("executorch"),
        "precision": precision,
        "metadata": meta,
        "input_shape": [batch or "batch", *example.shape[1:]],
        "batch": {"fixed": batch} if batch else {"min": 1, "max": result.max_batch},
        "delegate": "XnnpackBackend",
        "delegation": asdict(result.delegation),
    }
    if int8:
        info["quantization"] = {
            "scheme": "PT2E XNNPACKQuantizer: symmetric int8 per-channel weights, "
            + INT8_SCHEMES[scheme],
            "quantized_ops": ["linear", "conv1d", "conv2d"],
            "calibration_samples": int(samples.shape[0]),
        }
    return info


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
