"""Row 13: the same seed twice on CPU writes identical bytes — checkpoint and export.

``.ort`` files and the reduced-operator config are left out: onnxruntime's
converter writes the build folder's path into them, so their bytes depend on where
they were made, not on the seed.
"""

from __future__ import annotations

import pytest

from cr_edge.export.exporter import ExportOptions, export
from cr_edge.recipe import load_recipe
from cr_edge.train.loop import train
from reliability.helpers import hashes


@pytest.mark.slow
def test_same_seed_twice_gives_identical_bytes(tmp_path):
    recipe = load_recipe("digits-cr").replace(epochs=2, seed=13)
    runs = []
    for k in range(2):
        ck = train(recipe, tmp_path / f"ck{k}").checkpoint
        export(ck, tmp_path / f"ex{k}", ExportOptions(sensitivity=True))
        runs.append({"checkpoint": hashes(ck), "export": hashes(tmp_path / f"ex{k}")})
    assert runs[0] == runs[1]
    assert len(runs[0]["checkpoint"]) >= 5 and len(runs[0]["export"]) >= 4
