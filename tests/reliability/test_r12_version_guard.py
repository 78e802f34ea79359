"""Row 12: an opset or IR version newer than the declared runtime supports is refused first.

The guard's decisions are checked against the compatibility table for every
release it knows and every opset cr-edge exports (17..21); through the CLI, a
refusal names both versions and writes nothing, and an accepted export loads on
the declared target (the onnxruntime installed here).
"""

from __future__ import annotations

import onnx
import onnxruntime as ort
import pytest
from onnx import helper

from cr_edge.errors import InputError
from cr_edge.export.version_guard import ORT_SUPPORT, check_model
from reliability.helpers import one_line_error, run


def export_for(checkpoint, out, opset: int, runtime_version: str):
    """``cr-edge export`` at ``opset`` for the declared ``--runtime-version``."""
    return run(
        "export", checkpoint, "--out", out, "--opset", opset, "--runtime-version", runtime_version
    )


def stamped(opset: int, ir: int) -> onnx.ModelProto:
    model = helper.make_model(
        helper.make_graph([], "g", [], []), opset_imports=[helper.make_opsetid("", opset)]
    )
    model.ir_version = ir
    return model


@pytest.mark.parametrize("release", sorted(ORT_SUPPORT))
@pytest.mark.parametrize("runtime", ["onnxruntime", "ort-mobile"])
def test_guard_follows_the_table(release, runtime):
    max_opset, max_ir = ORT_SUPPORT[release]
    spec = f"{runtime}=={release[0]}.{release[1]}"
    for opset in range(17, 22):
        for ir in (8, 9, 10):
            model = stamped(opset, ir)
            if opset <= max_opset and ir <= max_ir:
                check_model(model, spec, ("onnx",))
            else:
                with pytest.raises(InputError) as err:
                    check_model(model, spec, ("onnx",))
                text = str(err.value)
                assert spec in text and ("onnxruntime >= 1." in text), text


def test_too_new_opset_is_refused_before_writing(checkpoint, tmp_path):
    out = tmp_path / "ex"
    result = export_for(checkpoint, out, 21, "onnxruntime==1.16")
    assert result.exit_code == 2
    line = one_line_error(result)
    assert (
        "opset 21 needs onnxruntime >= 1.18" in line
        and "onnxruntime==1.16 supports opset <= 19" in line
    )
    assert "--opset 19" in line
    assert not out.exists() or not any(out.iterdir())


@pytest.mark.parametrize("opset", [17, 21])
def test_an_accepted_export_loads_on_the_declared_target(checkpoint, tmp_path, opset):
    here = ".".join(ort.__version__.split(".")[:2])
    out = tmp_path / "ex"
    result = export_for(checkpoint, out, opset, f"onnxruntime=={here}")
    assert result.exit_code == 0, result.output
    for name in ("model.onnx", "model.jvp.onnx"):
        ort.InferenceSession(str(out / name), providers=["CPUExecutionProvider"])


def test_executorch_target_needs_the_pte(checkpoint, tmp_path):
    result = run("export", checkpoint, "--out", tmp_path / "ex", "--runtime-version", "executorch")
    assert result.exit_code == 2
    assert "--format executorch" in one_line_error(result)


def test_runtimes_are_named_as_runtime_names_them_and_old_names_still_read():
    from cr_edge.export.version_guard import parse_runtime_version
    from cr_edge.runtimes.registry import RUNTIME_NAMES

    for spec, runtime in [
        ("cpu==1.16", "cpu"),
        ("ort-mobile==1.16", "ort-mobile"),
        ("executorch-xnnpack", "executorch-xnnpack"),
        ("onnxruntime==1.16", "cpu"),
        ("executorch", "executorch-xnnpack"),
    ]:
        wanted = parse_runtime_version(spec)
        assert wanted.runtime == runtime and wanted.runtime in RUNTIME_NAMES, spec
