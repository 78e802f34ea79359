"""Partition coverage: which nodes a mobile execution provider takes, in how many partitions.

Two sources, never mixed. Where the EP exists in the installed onnxruntime, the
session itself says where each node went (``get_provider_graph_assignment_info``)
and partitions are the connected groups of nodes it placed on the EP. Where it does
not (NNAPI and CoreML on a Linux CI box), onnxruntime's own mobile usability checker
(``onnxruntime.tools.mobile_helpers.usability_checker``) estimates it from the EP's
supported-op tables, once with the shapes as exported and once as if they were
fixed (NNAPI needs fixed shapes; ``onnxruntime.tools.make_dynamic_shape_fixed``
makes them so). Either way every node left to the CPU is named with the reason.

The polynomial activations are Horner chains of Mul/Add: coverage passes when every
one of them is on the EP, and fails naming the ones that are not — a chain split
across providers costs a device copy per split.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import onnx

from cr_edge.ops import CHAIN_ARITHMETIC
from cr_edge.runtimes.ort_tools import ort_tool
from cr_edge.runtimes.runtime import AssignedNode
from cr_edge.runtimes.safe_load import Artifact, one_line
from cr_edge.validate.outcome import FAIL, PASS, Outcome

# EP -> (label, usability-checker function name, extra arguments)
STATIC_EPS = {
    "nnapi": ("NNAPI", "check_nnapi_partitions", ()),
    "coreml": (
        "CoreML MLProgram",
        "check_coreml_partitions",
        ("coreml_supported_mlprogram_ops.md",),
    ),
}


@dataclass(frozen=True)
class GraphNode:
    name: str
    op_type: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]


@dataclass(frozen=True)
class Unsupported:
    """A node left to the CPU, and why."""

    name: str
    op_type: str
    reason: str


@dataclass(frozen=True)
class Partitioning:
    """How one EP splits one graph."""

    ep: str
    source: str  # "session" (real assignment) or "static" (usability checker estimate)
    shapes: str  # "as exported" or "fixed"
    nodes: int
    supported: int
    partitions: int
    unsupported: list[Unsupported] = field(default_factory=list)
    caveats: list[str] = field(default_factory=list)

    def text(self) -> str:
        plural = "" if self.partitions == 1 else "s"
        return f"{self.supported}/{self.nodes} nodes, {self.partitions} partition{plural}"


def session_coverage(
    assignment: list[AssignedNode], graph: list[GraphNode], provider: str
) -> Partitioning:
    """The real placement: nodes the session put on ``provider``, grouped by graph edges.

    Nodes the optimizer created (absent from the artifact's graph) count as their own
    partition each: their edges are unknown, so the count errs high, never low.
    """
    on_ep = {a.name for a in assignment if a.provider == provider}
    by_name = {n.name: n for n in graph}
    producers = {out: n.name for n in graph if n.name in on_ep for out in n.outputs}
    parent = {name: name for name in on_ep}

    def find(name: str) -> str:
        while parent[name] != name:
            parent[name] = parent[parent[name]]
            name = parent[name]
        return name

    for name in on_ep & by_name.keys():
        for value in by_name[name].inputs:
            if value in producers:
                parent[find(name)] = find(producers[value])
    unsupported = [
        Unsupported(a.name, a.op_type, f"placed on {a.provider} by the session")
        for a in assignment
        if a.provider != provider
    ]
    return Partitioning(
        provider,
        "session",
        "as exported",
        len(assignment),
        len(on_ep),
        len({find(n) for n in on_ep}),
        unsupported,
    )


def static_coverage(model: onnx.ModelProto, runtime: str) -> list[Partitioning]:
    """onnxruntime's usability-checker estimate for ``runtime`` (nnapi, coreml), both shapes."""
    is_fixed_size_tensor = ort_tool("onnx_model_utils").is_fixed_size_tensor
    label, function, extra = STATIC_EPS[runtime]
    check = getattr(ort_tool("mobile_helpers.usability_checker"), function)
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    values = {v.name: v for v in [*inferred.graph.input, *inferred.graph.value_info]}
    results = []
    for fixed in (False, True):
        info = check(inferred, not fixed, *extra)
        taken = {id(n) for group in info.supported_groups for n in group}
        unsupported = []
        for node in inferred.graph.node:
            if id(node) in taken:
                continue
            if not info.supported_ops_checker.is_op_supported(node):
                reason = f"{node.domain or 'ai.onnx'}:{node.op_type} is not in {label}'s op table"
            else:
                dynamic = [
                    i for i in node.input if i in values and not is_fixed_size_tensor(values[i])
                ]
                reason = (
                    f"input {dynamic[0]!r} has a dynamic shape"
                    if dynamic
                    else "input rank too high"
                )
            unsupported.append(Unsupported(node.name, node.op_type, reason))
        results.append(
            Partitioning(
                label,
                "static",
                "fixed" if fixed else "as exported",
                info.num_nodes,
                info.num_supported_nodes,
                info.num_partitions,
                unsupported,
                info.supported_ops_checker.get_caveats(),
            )
        )
    return results


def static_outcome(model: onnx.ModelProto, runtime: str, horner: set[str]) -> Outcome:
    """Static coverage as an outcome; UNAVAILABLE (with the reason) if the checker cannot run.

    The checker is third-party code walking an untrusted graph: besides shape-inference
    errors it fails on unusual but valid graphs (an IndexError on a Transpose without
    ``perm``), so any exception from it means "no estimate", never a crash of validate.
    """
    try:
        parts = static_coverage(model, runtime)
    except Exception as e:
        return Outcome.unavailable(
            f"{STATIC_EPS[runtime][0]} static analysis failed: {one_line(e)}"
        )
    return coverage_outcome(parts, horner)


def coverage_outcome(parts: list[Partitioning], horner: set[str]) -> Outcome:
    """PASS when the deciding analysis (session, else fixed shapes) keeps every Horner node."""
    decisive = next((p for p in parts if p.source == "session" or p.shapes == "fixed"), parts[-1])
    missing = [u for u in decisive.unsupported if u.name in horner]
    label = decisive.ep.removesuffix("ExecutionProvider")
    summary = f"{label} {decisive.source}: " + "; ".join(
        f"{p.shapes} {p.text()}" if p.source == "static" else p.text() for p in parts
    )
    if missing:
        names = ", ".join(f"{u.name} ({u.reason})" for u in missing)
        summary += f"; Horner nodes not on the EP: {names}"
    figures = {"partitioning": [asdict(p) for p in parts]}
    return Outcome(FAIL if missing else PASS, summary, [], figures)


def horner_nodes(graph: list[GraphNode]) -> set[str]:
    """Names of the elementwise Mul/Add nodes that polynomial activations lower to."""
    return {n.name for n in graph if n.op_type in CHAIN_ARITHMETIC}


def graph_nodes(artifact: Artifact) -> list[GraphNode]:
    """The nodes of an ONNX or ORT-format artifact's main graph.

    For ``.ort`` call this only after onnxruntime has loaded the same bytes: ORT
    verifies the flatbuffer, the pure-Python reader used here does not.
    """
    if artifact.model is not None:
        return [
            GraphNode(n.name, n.op_type, tuple(n.input), tuple(n.output))
            for n in artifact.model.graph.node
        ]
    if artifact.kind != "ort":
        return []
    ort_tool("ort_format_model")  # puts its ort_flatbuffers_py bindings on sys.path
    from ort_flatbuffers_py.fbs.InferenceSession import InferenceSession

    graph = InferenceSession.GetRootAs(artifact.data, 0).Model().Graph()
    nodes = []
    for i in range(graph.NodesLength()):
        n = graph.Nodes(i)
        nodes.append(
            GraphNode(
                _text(n.Name()),
                _text(n.OpType()),
                tuple(_text(n.Inputs(j)) for j in range(n.InputsLength())),
                tuple(_text(n.Outputs(j)) for j in range(n.OutputsLength())),
            )
        )
    return nodes


def _text(raw: bytes | None) -> str:
    return (raw or b"").decode("utf-8", errors="replace")
