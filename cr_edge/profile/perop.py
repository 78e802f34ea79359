"""Per-operator cost from onnxruntime's own profiler, and where the time goes in a CR net.

A separate session with ``SessionOptions.enable_profiling`` runs the same inputs;
its Chrome-trace JSON has one ``<node>_kernel_time`` event per node per run, with the
op type and the provider. The profiler adds a few microseconds per node, so the
absolute times are inflated on tiny models; the shares between nodes are what this
is for. The first run of every node (allocations, kernel set-up) is dropped.

Shares are grouped the way a CR net spends them (``SHARES`` says what each counts):
the Horner chain (the elementwise Mul/Add of each polynomial and the Min/Max of its
domain guard), the linear layers (Gemm/MatMul/Conv and their int8 forms), the
quantize/dequantize steps, and the rest. Quantization splits a Gemm into
DynamicQuantizeLinear, MatMulInteger, Cast, scale Mul and bias Add; the elementwise
nodes belong to the layer, not to the polynomial, and are recognised by their
quantizer-given names (``<layer>_MatMul_quant...``, ``<layer>_Add``). Converting
activations to and from int8 (QuantizeLinear, DequantizeLinear, DynamicQuantizeLinear)
is a share of its own: an int8 model whose time goes there is not "linear-bound".
"""

from __future__ import annotations

import json
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np
import onnxruntime as ort

from cr_edge.ops import ANY_LINEAR, CHAIN_AT_RUN_TIME, QUANTIZE
from cr_edge.runtimes.ort import OrtRuntime
from cr_edge.runtimes.runtime import Runtime, Unavailable
from cr_edge.runtimes.safe_load import Artifact

SHARES = {  # group -> what it counts, in the order the profile prints them
    "horner": "polynomial Horner Mul/Add and the domain guard's Min/Max/Clip",
    "linear": "Gemm/MatMul/Conv and their integer forms, with a quantized layer's Cast, "
    "scale Mul and bias Add",
    "quantize": "QuantizeLinear/DequantizeLinear/DynamicQuantizeLinear: activations to "
    "and from int8",
    "other": "everything else (Reshape, Flatten, Softmax, ...)",
}
LAYER_NAME_TOKENS = ("MatMul", "Gemm", "Conv", "QuantizeLinear")  # in quantizer-made names
KERNEL_SUFFIX = "_kernel_time"


def profile_ops(
    runtime: Runtime, artifact: Artifact, feeds: dict[str, np.ndarray], runs: int, top: int
) -> dict:
    """Run ``runs`` times under the profiler: the ``top`` nodes by typical time, group shares."""
    if not isinstance(runtime, OrtRuntime):
        raise Unavailable(f"per-op times come from onnxruntime's profiler; {runtime.name} has none")
    with tempfile.TemporaryDirectory(prefix="cr-edge-profile-") as folder:
        session = _profiling_session(runtime, artifact, str(Path(folder) / "ort"))
        for _ in range(runs + 1):  # +1: the first run is dropped from the trace
            session.run(None, feeds)
        events = json.loads(Path(session.end_profiling()).read_text())
    return summarize(events, top)


def summarize(events: list[dict], top: int) -> dict:
    """Trace events -> per-node typical time, the top nodes, and Horner/linear/other shares.

    The typical time is a trimmed mean (the slowest and fastest 10% dropped): a plain
    mean lets one preempted run make an 8-element Max look like the costliest node,
    and a median of the profiler's whole-microsecond durations ties every tiny node.
    """
    durations: dict[str, list[float]] = defaultdict(list)
    kinds: dict[str, tuple[str, str]] = {}
    for event in events:
        name = event.get("name", "")
        if event.get("cat") != "Node" or not name.endswith(KERNEL_SUFFIX):
            continue
        node = name.removesuffix(KERNEL_SUFFIX)
        args = event.get("args", {})
        if node not in kinds:  # the node's first run: allocations and set-up, not steady state
            kinds[node] = (args.get("op_name", "?"), args.get("provider", "?"))
            continue
        durations[node].append(float(event.get("dur", 0)))
    typical = {node: _trimmed_mean(d) for node, d in durations.items()}
    total = sum(typical.values()) or 1.0
    nodes = sorted(typical, key=typical.get, reverse=True)
    stems = _layer_stems(kinds)
    groups = dict.fromkeys(SHARES, 0.0)
    for node in nodes:
        groups[_group(node, kinds[node][0], stems)] += typical[node] / total
    return {
        "source": "onnxruntime profiler (SessionOptions.enable_profiling), first run dropped",
        "runs": max((len(d) for d in durations.values()), default=0),
        "nodes": len(kinds),
        "top": [
            {
                "node": node,
                "op_type": kinds[node][0],
                "provider": kinds[node][1].removesuffix("ExecutionProvider"),
                "typical_us": typical[node],
                "share": typical[node] / total,
            }
            for node in nodes[:top]
        ],
        "share": groups,
    }


def _trimmed_mean(values: list[float], cut: float = 0.1) -> float:
    ordered = np.sort(np.asarray(values))
    k = int(len(ordered) * cut)
    return float(ordered[k : len(ordered) - k].mean()) if len(ordered) > 2 * k else 0.0


def _layer_stems(kinds: dict[str, tuple[str, str]]) -> tuple[str, ...]:
    """Names of the linear layers with the quantizer's suffix cut: ``node_linear_MatMul_quant`` -> ``node_linear``."""
    stems = []
    for node, (op_type, _) in kinds.items():
        if op_type in ANY_LINEAR:
            for token in LAYER_NAME_TOKENS:
                node = node.split(f"_{token}")[0]
            stems.append(node)
    return tuple(stems)


def _group(node: str, op_type: str, stems: tuple[str, ...]) -> str:
    if op_type in QUANTIZE:
        return "quantize"
    if op_type in ANY_LINEAR:
        return "linear"
    if any(t in node for t in LAYER_NAME_TOKENS) or node.startswith(tuple(f"{s}_" for s in stems)):
        return "linear"  # a quantized layer's scale Mul, bias Add or Cast
    return "horner" if op_type in CHAIN_AT_RUN_TIME else "other"


def _profiling_session(
    runtime: OrtRuntime, artifact: Artifact, prefix: str
) -> ort.InferenceSession:
    """The session ``runtime.load`` would build, with the profiler on."""
    options = runtime.session_options(artifact)
    options.enable_profiling = True
    options.profile_file_prefix = prefix
    return runtime.create_session(artifact, options)
