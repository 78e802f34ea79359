"""Text models exported: int64 ids in, Gather then a masked mean, the CR layers in Horner form;
output and derivative parity (w.r.t. the pooled embedding) under onnxruntime, failing on a
corrupted embedding table; the device-side tokenizer and profile feed ids."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper
from review_corpus import write_review_corpus
from runtime_fixtures import copy_model

from cr_edge.api import export, train
from cr_edge.checkpoint import load_checkpoint
from cr_edge.data.tokenizer import Tokenizer
from cr_edge.export.oracle_writer import ReferenceNet
from cr_edge.recipe import Recipe


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """An ordinal text model (the head with the most outputs), trained briefly and exported."""
    root = tmp_path_factory.mktemp("text")
    data = write_review_corpus(root / "reviews.csv", 400, seed=1)
    recipe = Recipe(
        data=str(data),
        label="label",
        text_column="text",
        task="ordinal",
        buckets=512,
        max_len=24,
        embed_dim=8,
        hidden=(8,),
        epochs=4,
    )
    train(recipe, root / "ck")
    export(root / "ck", root / "ex")
    return root


def _run(path, ids):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": ids})


def test_graph_takes_int64_ids_and_pools_with_gather(exported):
    model = onnx.load(exported / "ex" / "model.onnx")
    (inp,) = model.graph.input
    assert inp.type.tensor_type.elem_type == onnx.TensorProto.INT64
    dims = [d.dim_value or d.dim_param for d in inp.type.tensor_type.shape.dim]
    assert isinstance(dims[0], str) and dims[1] == 24  # dynamic batch, max_len ids
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("Gather") == 1 and "ReduceSum" in ops and "Pow" not in ops
    meta = {p.key: p.value for p in model.metadata_props}
    assert Tokenizer.from_json(meta["cr_edge.tokenizer"]) == Tokenizer(buckets=512, max_len=24)
    assert "cr_edge.normalisation" not in meta


def test_device_tokenizer_and_graph_match_pytorch_on_raw_text(exported):
    ckpt = load_checkpoint(exported / "ck")
    texts = ["The food was not good at all, service slow.", "Amazing!", "", "!!!"]
    ids = Tokenizer.from_json(ckpt.tokenizer.to_json()).encode(texts)  # as an app would
    assert (ids[2] == 0).all() and (ids[3] == 0).all()  # no words: padding only
    path = exported / "ex" / "model.onnx"
    meta = {p.key: p.value for p in onnx.load(path).metadata_props}
    guard = [
        (np.array(g["lo"]), np.array(g["hi"])) for g in json.loads(meta["cr_edge.domain_guard"])
    ]
    with torch.no_grad():  # the trained net behind the export's guard
        probs, rank = ReferenceNet(ckpt, guard).outputs(torch.from_numpy(ids))
    got = _run(path, ids)
    np.testing.assert_allclose(got[0], probs.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got[1], rank.numpy(), rtol=1e-5, atol=1e-5)


def test_validate_passes_outputs_and_companion_derivatives(exported, cli_run, tmp_path):
    report = tmp_path / "r.json"
    model = exported / "ex" / "model.onnx"
    result = cli_run("validate", str(model), "--runtime", "cpu", "--json", str(report))
    assert result.exit_code == 0, result.output
    (row,) = json.loads(report.read_text())["results"]
    assert row["outputs"]["status"] == "PASS"
    assert row["derivatives"]["status"] == "PASS"
    assert row["derivatives"]["figures"]["method"] == "companion"
    oracle = np.load(exported / "ex" / "model.ref.npz")
    assert oracle["x"].dtype == np.int64 and oracle["v"].shape == (len(oracle["x"]), 8)


def test_a_corrupted_embedding_table_fails_validation(exported, cli_run, tmp_path):
    names = ("model.onnx", "model.jvp.onnx", "model.ref.npz")  # no manifest: loose files
    folder = copy_model(exported / "ex", tmp_path / "bad", names)
    for name in ("model.onnx", "model.jvp.onnx"):
        model = onnx.load(folder / name)
        gather = next(n for n in model.graph.node if n.op_type == "Gather")
        init = next(i for i in model.graph.initializer if i.name == gather.input[0])
        table = numpy_helper.to_array(init)
        init.CopyFrom(numpy_helper.from_array(table * 1.01, init.name))
        onnx.save(model, folder / name)
    result = cli_run("validate", str(folder / "model.onnx"), "--runtime", "cpu")
    assert result.exit_code == 1, result.output
    assert "[cpu] outputs" in result.output and "[cpu] derivatives" in result.output


def test_finite_differences_are_refused_for_ids(exported, cli_run, tmp_path):
    report = tmp_path / "r.json"
    args = ["--runtime", "cpu", "--derivatives", "finite-differences", "--json", str(report)]
    result = cli_run("validate", str(exported / "ex" / "model.onnx"), *args)
    assert result.exit_code == 0, result.output  # outputs still checked
    (row,) = json.loads(report.read_text())["results"]
    assert row["derivatives"]["status"] == "UNAVAILABLE"
    assert "no finite differences of discrete ids" in row["derivatives"]["summary"]


def test_profile_feeds_ids_from_the_vocabulary(exported):
    from cr_edge.profile.workload import make_feeds
    from cr_edge.runtimes.registry import parse_runtimes
    from cr_edge.runtimes.safe_load import check_artifact

    model = exported / "ex" / "model.onnx"
    (runtime,) = parse_runtimes("cpu")
    session = runtime.load(check_artifact(model))
    (ids,) = make_feeds(session, 3, model).values()
    assert ids.dtype == np.int64 and ids.shape == (3, 24)
    assert ids.min() >= 1 and ids.max() <= 512  # real ids, no padding


@pytest.mark.slow
def test_pipeline_on_text_quantizes_its_embedding_and_passes(tmp_path):
    from cr_edge.pipeline import run_pipeline

    data = write_review_corpus(tmp_path / "reviews.csv", 300, seed=2)
    recipe = Recipe(
        data=str(data), text_column="text", buckets=256, max_len=16, embed_dim=8, hidden=(8,)
    )
    result = run_pipeline(recipe.replace(epochs=2), tmp_path / "run", "cpu", profile_iters=20)
    assert result.failures == []
    quant = result.summary["quantized"]
    if quant["policy"] is not None:  # auto kept a model: smaller than fp32, every check passed
        kept = result.out / "quantized" / quant["file"]
        assert kept.stat().st_size < (result.out / "export" / "model.onnx").stat().st_size
