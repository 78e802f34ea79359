"""Row 21: every row of the --target-runtime version table cites where it was read.

The table (``cr_edge.export.version_guard.ORT_SUPPORT``) was checked against ONNX
Runtime's published compatibility table; each row names the page revision it came
from in ``ROW_SOURCES``. A row without a source, or a source that is not that page,
fails here. The table must also be what the page's rows imply of any real table:
no release supports less than the one before it. And the newest row is honest
about the onnxruntime installed here: a model stamped with its opset and IR loads.
"""

from __future__ import annotations

import itertools

import onnxruntime as ort
from onnx import TensorProto, helper

from cr_edge.export.version_guard import COMPATIBILITY, ORT_SUPPORT, ROW_SOURCES


def test_every_row_cites_the_published_table():
    uncited = [release for release in ORT_SUPPORT if release not in ROW_SOURCES]
    stray = [release for release in ROW_SOURCES if release not in ORT_SUPPORT]
    elsewhere = {r: s for r, s in ROW_SOURCES.items() if not s.startswith(COMPATIBILITY)}
    print(f"row 21: {len(ORT_SUPPORT)} rows, {len(uncited)} uncited")
    assert not uncited and not stray and not elsewhere, (uncited, stray, elsewhere)
    assert "onnxruntime.ai/docs/reference/compatibility" in COMPATIBILITY


def test_no_release_supports_less_than_the_one_before():
    rows = [ORT_SUPPORT[r] for r in sorted(ORT_SUPPORT)]
    assert all(a[0] <= b[0] and a[1] <= b[1] for a, b in itertools.pairwise(rows))


def test_the_newest_row_loads_on_the_installed_onnxruntime():
    opset, ir = ORT_SUPPORT[max(ORT_SUPPORT)]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = ir
    ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
