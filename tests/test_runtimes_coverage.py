"""Mobile EP coverage: the Horner chain on NNAPI/CoreML (static) and real session placement."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from runtime_fixtures import build_model_dir

from cr_edge.runtimes.registry import get_runtime
from cr_edge.runtimes.runtime import AssignedNode
from cr_edge.runtimes.safe_load import check_artifact
from cr_edge.validate.coverage import (
    GraphNode,
    coverage_outcome,
    graph_nodes,
    horner_nodes,
    session_coverage,
    static_coverage,
    static_outcome,
)
from cr_edge.validate.outcome import FAIL, PASS, UNAVAILABLE
from cr_edge.validate.validator import validate

HORNER = {"node_mul_2", "node_add_6", "node_mul_7", "node_add_13", "node_mul_12", "node_add_20"}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return build_model_dir(tmp_path_factory.getbasetemp())


@pytest.mark.parametrize("runtime, label", [("nnapi", "NNAPI"), ("coreml", "CoreML MLProgram")])
def test_static_coverage_keeps_the_horner_chain(model_dir, runtime, label):
    artifact = check_artifact(model_dir / "model.onnx")
    assert horner_nodes(graph_nodes(artifact)) == HORNER
    exported, fixed = static_coverage(artifact.model, runtime)
    assert (fixed.ep, fixed.source, fixed.shapes) == (label, "static", "fixed")
    assert (fixed.supported, fixed.nodes, fixed.partitions, fixed.unsupported) == (8, 8, 1, [])
    # as exported the batch axis is dynamic: the checker names every node and the input
    assert exported.supported == 0 and exported.partitions == 0
    assert {u.name for u in exported.unsupported} >= HORNER
    assert all("dynamic shape" in u.reason for u in exported.unsupported)
    assert any("Gemm" in caveat for caveat in fixed.caveats)
    outcome = static_outcome(artifact.model, runtime, HORNER)
    assert outcome.status == PASS and "fixed 8/8 nodes, 1 partition" in outcome.summary


def test_validate_reports_static_coverage_for_absent_eps(model_dir):
    rows = {r.runtime: r for r in validate([model_dir / "model.ort"], "nnapi,coreml").results}
    for name in ("nnapi", "coreml"):
        row = rows[name]
        assert row.outputs.status == UNAVAILABLE and "has no" in row.outputs.summary
        assert row.coverage.status == PASS  # read from the sibling model.onnx


def _erf_model() -> onnx.ModelProto:
    """x -> Erf -> Horner step (Mul, Add): NNAPI's table has no Erf."""
    coef = numpy_helper.from_array(np.full((4,), 0.5, np.float32), "a1")
    nodes = [
        helper.make_node("Erf", ["x"], ["e"], name="erf"),
        helper.make_node("Mul", ["e", "a1"], ["m"], name="horner_mul"),
        helper.make_node("Add", ["m", "a1"], ["y"], name="horner_add"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
        [coef],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_static_coverage_names_the_node_an_ep_lacks():
    model = _erf_model()
    _, fixed = static_coverage(model, "nnapi")
    (erf,) = fixed.unsupported
    assert (erf.name, erf.reason) == ("erf", "ai.onnx:Erf is not in NNAPI's op table")
    assert fixed.supported == 2 and fixed.partitions == 1
    assert static_outcome(model, "nnapi", {"horner_mul", "horner_add"}).status == PASS
    _, coreml = static_coverage(model, "coreml")
    assert coreml.unsupported == []  # MLProgram takes Erf


def test_static_coverage_survives_a_checker_crash():
    # onnxruntime's checker reads Transpose's first attribute as ``perm`` and raises
    # IndexError when the (optional) attribute is absent.
    graph = helper.make_graph(
        [helper.make_node("Transpose", ["x"], ["y"], name="t")],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 2])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    outcome = static_outcome(model, "coreml", set())
    assert outcome.status == UNAVAILABLE and "IndexError" not in outcome.summary
    assert "static analysis failed" in outcome.summary


@pytest.mark.parametrize("name", ["model.onnx", "model.ort"])
def test_session_placement_is_read_from_onnxruntime(model_dir, name):
    runtime = get_runtime("cpu")
    artifact = check_artifact(model_dir / name)
    session = runtime.load(artifact)
    feeds = {"x": np.zeros((3, 8), np.float32)}
    placed = runtime.placement(artifact, session, feeds)
    assert {p.name for p in placed} >= HORNER
    assert {p.provider for p in placed} == {"CPUExecutionProvider"}
    part = session_coverage(placed, graph_nodes(artifact), "CPUExecutionProvider")
    assert (part.supported, part.nodes, part.partitions) == (8, 8, 1)


def test_split_horner_chain_is_named():
    """An EP that takes Gemm but not Mul/Add (as ORT's XNNPACK EP) splits the graph."""
    graph = [
        GraphNode("gemm1", "Gemm", ("x",), ("z",)),
        GraphNode("mul", "Mul", ("a", "z"), ("m",)),
        GraphNode("add", "Add", ("m", "b"), ("h",)),
        GraphNode("gemm2", "Gemm", ("h",), ("y",)),
    ]
    xnn, cpu = "XnnpackExecutionProvider", "CPUExecutionProvider"
    placed = [
        AssignedNode(xnn, "gemm1", "Gemm"),
        AssignedNode(cpu, "mul", "Mul"),
        AssignedNode(cpu, "add", "Add"),
        AssignedNode(xnn, "gemm2", "Gemm"),
    ]
    part = session_coverage(placed, graph, xnn)
    assert (part.supported, part.nodes, part.partitions) == (2, 4, 2)
    outcome = coverage_outcome([part], horner_nodes(graph))
    assert outcome.status == FAIL
    assert "mul (placed on CPUExecutionProvider by the session)" in outcome.summary
    assert "Xnnpack session: 2/4 nodes, 2 partitions" in outcome.summary
