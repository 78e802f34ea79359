"""Mutated .onnx/.ort files: validate answers PASS, FAIL or InputError, nothing else, no crash.

Seeded truncations, bit flips, byte insertions and overwrites of a valid model, fed to
the library in-process (the CLI adds only printing). ``CR_EDGE_FUZZ_N`` sets the cases
per format (default 150 each, in ``SHARDS`` seeded shards that xdist's workers share).
"""

from __future__ import annotations

import os
import random
import shutil
from collections import Counter
from pathlib import Path

import pytest
from runtime_fixtures import build_model_dir

from cr_edge.errors import InputError
from cr_edge.validate.validator import validate

# validate() now opens every model in a sandboxed child first (a process start per case), so
# this end-to-end pass runs a bounded sample; the loader battery (reliability row 2) runs the
# >= 1,000 mutated files per run, and CR_EDGE_FUZZ_N raises both.
CASES = int(os.environ.get("CR_EDGE_FUZZ_N", "150"))
SHARDS = 3  # each its own seed and test, so that two workers share the cases
SPLIT_ACROSS_WORKERS = True  # tests/conftest.py: these tests need not share a worker


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return build_model_dir(tmp_path_factory.getbasetemp())


def mutate(data: bytes, rng: random.Random) -> tuple[str, bytes]:
    """One random corruption of ``data``, as a bad disk, a cut download or an editor make them."""
    b = bytearray(data)
    kind = rng.choice(("truncate", "flip", "insert", "overwrite"))
    if kind == "truncate":
        del b[rng.randrange(len(b)) :]
    elif kind == "flip":
        for _ in range(rng.randint(1, 4)):
            b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
    elif kind == "insert":
        at = rng.randrange(len(b) + 1)
        b[at:at] = rng.randbytes(rng.randint(1, 8))
    else:
        for _ in range(rng.randint(1, 16)):
            b[rng.randrange(len(b))] = rng.randrange(256)
    return kind, bytes(b)


@pytest.mark.parametrize("shard", range(SHARDS))
@pytest.mark.parametrize("suffix, runtime", [(".onnx", "cpu"), (".ort", "ort-mobile")])
def test_mutated_models_give_a_verdict_or_input_error(model_dir, tmp_path, suffix, runtime, shard):
    shutil.copy(model_dir / "model.ref.npz", tmp_path / "model.ref.npz")
    original = (model_dir / f"model{suffix}").read_bytes()
    path = tmp_path / f"model{suffix}"
    rng = random.Random(f"cr-edge{suffix}#{shard}")
    outcomes: Counter[str] = Counter()
    cases = CASES // SHARDS
    for case in range(cases):
        kind, data = mutate(original, rng)
        path.write_bytes(data)
        try:
            report = validate([path], runtime)
        except InputError as e:
            assert str(path) in str(e) and "\n" not in str(e), (case, kind, str(e))
            outcomes["InputError"] += 1
            continue
        # any other exception propagates and fails the test with the case in the traceback
        outcomes["FAIL" if report.failures() else "PASS"] += 1
    assert outcomes["InputError"] > cases // 2  # most mutations break the file outright
    assert outcomes["FAIL"] > 0  # and some leave a loadable but different model
