"""Row 20: no command ever prints a traceback; an unexpected error is one line, exit 1.

Two halves. An unexpected exception (one cr-edge does not raise on purpose) is
planted in the work function of every command: the command must print one
``error:`` line with a hint to rerun with ``--debug``, exit 1, and with ``--debug``
raise the exception itself. Then a corpus of mutated files (``fuzz.mutate``: model,
oracle, calibration, checkpoint, CSV, recipe) goes through every command that reads
them: each run must end in exit 0, 1 or 2 with no traceback in its output.
``CR_EDGE_FUZZ20_N`` cases per file kind (2 by default, to keep the suite's time: every
command still sees mutated input of each kind; 12 in ``bench/reliability.py``).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from reliability.fuzz import mutate
from reliability.helpers import run

PER_KIND = int(os.environ.get("CR_EDGE_FUZZ20_N", "2"))

# command -> (module whose work function is replaced, its name)
WORK = {
    "train": ("cr_edge.api", "train"),
    "export": ("cr_edge.api", "export"),
    "quantize": ("cr_edge.api", "quantize"),
    "validate": ("cr_edge.validate.validator", "validate"),
    "profile": ("cr_edge.api", "profile"),
    "pipeline": ("cr_edge.pipeline", "run_pipeline"),
    "fairfight": ("cr_edge.fairfight.fight", "fairfight"),
}


def invocation(command: str, checkpoint: Path, exported: Path, out: Path) -> list[object]:
    model = exported / "model.onnx"
    return {
        "train": ["train", "--recipe", "digits-cr", "--out", out],
        "export": ["export", checkpoint, "--out", out],
        "quantize": ["quantize", model, "--out", out, "--mode", "dynamic"],
        "validate": ["validate", model, "--runtime", "cpu"],
        "profile": ["profile", model, "--runtime", "cpu", "--iters", "1", "--no-memory"],
        "pipeline": ["pipeline", "--out", out],
        "fairfight": ["fairfight", "--out", out],
    }[command]


def planted(*_args, **_kwargs):
    raise ZeroDivisionError("planted: not a CrEdgeError")


@pytest.mark.parametrize("command", sorted(WORK))
def test_an_unexpected_error_is_one_line_and_exit_1(
    command, checkpoint, exported, tmp_path, monkeypatch
):
    import importlib

    module, name = WORK[command]
    monkeypatch.setattr(importlib.import_module(module), name, planted)
    args = invocation(command, checkpoint, exported, tmp_path / "out")
    result = run(*args)
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    (line,) = [x for x in result.output.splitlines() if x.startswith("error: ")]
    assert "ZeroDivisionError: planted" in line and "--debug" in line, line
    debug = run("--debug", *args)
    assert isinstance(debug.exception, ZeroDivisionError)


def corpus(checkpoint: Path, exported: Path, work: Path) -> dict[str, tuple[Path, list]]:
    """File kind -> (the pristine copy to mutate, the command that reads it)."""
    ex, ck = work / "export", work / "checkpoint"
    shutil.copytree(exported, ex)
    shutil.copytree(checkpoint, ck)
    for folder in (ex, ck):  # fuzz the readers, not only the manifest check
        (folder / "manifest.json").unlink()
    rng = np.random.default_rng(0)
    rows = [
        "a,b,label",
        *(f"{x:.3f},{y:.3f},{i % 2}" for i, (x, y) in enumerate(rng.normal(size=(40, 2)))),
    ]
    (work / "data.csv").write_text("\n".join(rows) + "\n")
    recipe = Path(__file__).resolve().parents[2] / "models" / "digits-cr.toml"
    shutil.copyfile(recipe, work / "recipe.toml")
    out = work / "out"
    model = ex / "model.onnx"
    return {
        "onnx-validate": (model, ["validate", model, "--runtime", "cpu"]),
        "onnx-profile": (
            model,
            ["profile", model, "--runtime", "cpu", "--iters", "1", "--no-memory"],
        ),
        "onnx-quantize": (model, ["quantize", model, "--out", out, "--mode", "dynamic", "--force"]),
        "ort": (ex / "model.ort", ["validate", ex / "model.ort", "--runtime", "ort-mobile"]),
        "oracle": (ex / "model.ref.npz", ["validate", model, "--runtime", "cpu"]),
        "calib": (ck / "calib.npz", ["export", ck, "--out", out, "--force"]),
        "config": (ck / "config.json", ["export", ck, "--out", out, "--force"]),
        "weights": (ck / "model.safetensors", ["export", ck, "--out", out, "--force"]),
        "csv": (
            work / "data.csv",
            [
                *("train", "--data", work / "data.csv", "--label", "label", "--epochs", "1"),
                *("--out", out, "--force"),
            ],
        ),
        "recipe": (
            work / "recipe.toml",
            [
                *("pipeline", "--recipe", work / "recipe.toml", "--epochs", "1"),
                *("--runtime", "cpu", "--out", out, "--force"),
            ],
        ),
    }


def fuzz_commands(checkpoint: Path, exported: Path, work: Path, per_kind: int, seed: int = 0):
    """Run the corpus; return (cases, [what printed a traceback or an odd exit])."""
    rng = np.random.default_rng(seed)
    cases, bad = 0, []
    for kind, (path, args) in corpus(checkpoint, exported, work).items():
        pristine = path.read_bytes()
        for case in range(per_kind):
            path.write_bytes(mutate(pristine, rng))
            result = run(*args)
            cases += 1
            escaped = result.exception is not None and not isinstance(result.exception, SystemExit)
            if escaped or "Traceback" in result.output or result.exit_code not in (0, 1, 2):
                bad.append(f"{kind} case {case}: exit {result.exit_code}: {result.output[-300:]}")
        path.write_bytes(pristine)
    return cases, bad


@pytest.mark.slow
def test_the_fuzz_corpus_prints_no_traceback_from_any_command(checkpoint, exported, tmp_path):
    cases, bad = fuzz_commands(checkpoint, exported, tmp_path, PER_KIND)
    print(f"row 20: {cases} mutated inputs through every command, {len(bad)} tracebacks")
    assert not bad, bad[:3]
