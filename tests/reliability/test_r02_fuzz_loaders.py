"""Row 2: mutated .onnx, .ort, .npz, checkpoint, CSV and IDX files -> typed errors only.

At least 1,000 mutated files per run across the kinds (``CR_EDGE_FUZZ_N`` for more),
in process, as the loaders run under ``validate``/``profile``/``train``/``export``.
A crash inside onnxruntime is caught one level up, by the sandbox child that the
CLI opens untrusted models in: a child killed by a signal becomes exit 2.
"""

from __future__ import annotations

import os
import signal

import pytest

from cr_edge.runtimes import sandbox
from reliability.fuzz import fuzz, mutate, targets
from reliability.helpers import one_line_error, run

TOTAL = int(os.environ.get("CR_EDGE_FUZZ_N", "1200"))


@pytest.fixture(scope="module")
def kinds(checkpoint, exported, tmp_path_factory):
    return targets(checkpoint, exported, tmp_path_factory.mktemp("fuzz"))


def test_mutated_files_give_typed_one_line_errors(kinds):
    per_kind = -(-max(TOTAL, 1000) // len(kinds))
    tallies = {
        k: fuzz(path, loader, per_kind, seed)
        for seed, (k, (path, loader)) in enumerate(kinds.items())
    }
    cases = sum(t.cases for t in tallies.values())
    crashes = [f"{k}: {c}" for k, t in tallies.items() for c in t.crashes]
    print(f"row 2: {cases} mutated files, {len(crashes)} crashes/hangs/untyped errors")
    assert cases >= 1000
    assert not crashes, crashes[:5]
    assert all(t.refused > 0 for t in tallies.values())  # the mutations did reach the checks


def test_a_loader_killed_by_a_signal_is_exit_2(exported, monkeypatch):
    crash = ["-c", f"import os; os.kill(os.getpid(), {int(signal.SIGSEGV)})"]
    monkeypatch.setattr(sandbox, "child_args", lambda path: crash)
    result = run("validate", exported / "model.onnx", "--runtime", "cpu")
    assert result.exit_code == 2
    assert f"onnxruntime crashed (signal {int(signal.SIGSEGV)})" in one_line_error(result)


def test_a_hanging_loader_is_exit_2(exported, monkeypatch):
    monkeypatch.setattr(sandbox, "child_args", lambda path: ["-c", "while 1: pass"])
    monkeypatch.setattr(sandbox, "TIMEOUT_S", 1)
    result = run(
        "profile", exported / "model.onnx", "--runtime", "cpu", "--iters", "1", "--no-memory"
    )
    assert result.exit_code == 2
    assert "took longer than 1 s" in one_line_error(result)


def test_the_sandbox_child_survives_mutated_models(exported, tmp_path):
    import numpy as np

    rng = np.random.default_rng(7)
    pristine = (exported / "model.onnx").read_bytes()
    for case in range(3):
        path = tmp_path / f"m{case}.onnx"
        path.write_bytes(mutate(pristine, rng))
        sandbox.sandboxed_load(
            path
        )  # raises on a signal or a hang; a Python error in the child is fine
