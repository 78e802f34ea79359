"""Text models quantize: int64 ids accepted, the embedding table block-quantized
(GatherBlockQuantized) so that every id's row comes back within one quantization step,
the companion's ``v`` still at the pooled embedding, and the CLI writes a smaller model
that passes validate."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from review_corpus import write_review_corpus

from cr_edge.api import export, train
from cr_edge.quantize.embedding import dequantize_table, quantize_table
from cr_edge.quantize.integer_eval import ReferenceSession
from cr_edge.quantize.policy import QuantConfig, QuantPolicy
from cr_edge.quantize.quantizer import quantize
from cr_edge.recipe import Recipe
from cr_edge.validate.validator import validate

EMBED = 32


@pytest.fixture(scope="module")
def text(tmp_path_factory):
    """An ordinal text model whose table is nearly all of it, trained briefly and exported."""
    root = tmp_path_factory.mktemp("text-quant")
    data = write_review_corpus(root / "reviews.csv", 600, seed=3)
    recipe = Recipe(
        data=str(data),
        label="label",
        text_column="text",
        task="ordinal",
        buckets=2048,
        max_len=24,
        embed_dim=EMBED,
        hidden=(8,),
        epochs=4,
    )
    train(recipe, root / "ck")
    export(root / "ck", root / "ex")
    return root


def _gather_model(node: onnx.NodeProto, inits: list[onnx.TensorProto]) -> onnx.ModelProto:
    """The quantized model's GatherBlockQuantized alone: ids in, rows out."""
    graph = helper.make_graph(
        [node],
        "rows",
        [helper.make_tensor_value_info(node.input[1], TensorProto.INT64, ["n"])],
        [helper.make_tensor_value_info(node.output[0], TensorProto.FLOAT, ["n", EMBED])],
        inits,
    )
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    return helper.make_model(graph, opset_imports=opsets)


@pytest.mark.parametrize("mode", ["nb8", "w8"])
def test_the_quantized_table_round_trips_every_id(text, tmp_path, mode):
    """Each id's row, as onnxruntime's GatherBlockQuantized returns it, lies within one
    quantization step (its block's scale) of the fp32 row; the exact evaluator agrees."""
    config = QuantConfig(tmp_path, QuantPolicy(mode), text / "ck" / "calib.npz")
    result = quantize(text / "ex" / "model.onnx", config)
    fp32 = onnx.load(text / "ex" / "model.onnx")
    gather = next(n for n in fp32.graph.node if n.op_type == "Gather")
    table = numpy_helper.to_array(
        next(t for t in fp32.graph.initializer if t.name == gather.input[0])
    )
    q = onnx.load(result.files["onnx"])
    node = next(n for n in q.graph.node if n.op_type == "GatherBlockQuantized")
    inits = [t for t in q.graph.initializer if t.name in node.input]
    rows_model = _gather_model(node, inits)
    ids = np.arange(table.shape[0], dtype=np.int64)
    session = ort.InferenceSession(
        rows_model.SerializeToString(), providers=["CPUExecutionProvider"]
    )
    rows = session.run(None, {node.input[1]: ids})[0]
    attrs = {a.name: a.i for a in node.attribute}
    scales = numpy_helper.to_array(next(t for t in inits if t.name == node.input[2]))
    step = np.repeat(scales, attrs["block_size"], axis=1)[:, :EMBED]
    assert np.all(np.abs(rows - table) <= step * (1 + 1e-6))
    exact = ReferenceSession(rows_model).run({node.input[1]: ids})[0]
    np.testing.assert_array_equal(exact, rows)


def test_table_codes_by_hand():
    """Symmetric 8- and 4-bit rows: a row of +-1 and 0.5 codes back exactly; 4-bit packs two
    codes per byte low nibble first (ORT's layout); a zero row gets scale 1, codes at zero."""
    table = np.array([[1.0, -1.0, 0.5, 0.0] * 4, [0.0] * 16], dtype=np.float32)  # dim 16
    for bits, top in ((8, 127), (4, 7)):
        codes, scales = quantize_table(table, bits, 16)
        assert scales[0, 0] == np.float32(1.0 / top) and scales[1, 0] == 1.0
        back = dequantize_table(codes, scales, bits, 16, 16)
        assert np.abs(back - table).max() <= scales[0, 0] / 2
        assert np.all(back[1] == 0)
    codes, _ = quantize_table(table, 4, 16)
    assert codes.shape == (2, 8) and codes[0, 0] == (8 + 7) | ((8 - 7) << 4)


def test_companion_v_stays_at_the_pooled_embedding(text, tmp_path):
    config = QuantConfig(tmp_path, QuantPolicy("nb8"), text / "ck" / "calib.npz")
    result = quantize(text / "ex" / "model.onnx", config)
    comp = onnx.load(result.files["jvp"])
    inputs = {i.name: i for i in comp.graph.input}
    assert inputs["x"].type.tensor_type.elem_type == TensorProto.INT64
    v_dims = [d.dim_value for d in inputs["v"].type.tensor_type.shape.dim[1:]]
    assert v_dims == [EMBED]
    assert result.chosen.passed, result.chosen.why


def test_cli_quantizes_a_text_model_smaller_and_validate_passes(text, cli_run, tmp_path):
    """``quantize`` used to refuse int64 inputs with exit 2; auto now keeps a smaller model
    (or fp32 with the reason), every check passing, accuracy within half a point."""
    out = tmp_path / "q"
    res = cli_run(
        "quantize", text / "ex" / "model.onnx", "--out", out, "--calib", text / "ck" / "calib.npz"
    )
    assert res.exit_code == 0, res.output
    report = json.loads((out / "quantize.json").read_text())
    if report["chosen"] == "fp32":
        assert "kept fp32" in report["notes"][-1]
        return
    model = next(p for p in out.glob("model.*.onnx") if ".jvp." not in p.name)
    # codes + one scale per 32-wide row: 9/32 of the table, plus this small net's metadata
    # and layers (yelp-full-cr's 0.3x, 48-wide rows of 65k buckets, is bench.quantize's)
    assert model.stat().st_size <= 0.35 * (text / "ex" / "model.onnx").stat().st_size
    chosen = next(t for t in report["tried"] if t["label"] == report["chosen"])
    assert chosen["passed"]
    assert report["fp32"]["accuracy"] - chosen["accuracy"] <= 0.005
    assert validate([model], "cpu").passed
