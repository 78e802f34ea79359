"""Row 11: a dynamic-batch export runs at batch 1, 2, 7 and 512 with no shape error.

Tracing can bake the example's batch size into a Reshape; this runs the primal
model, its derivative companion and the .ort copy at every size, checks each row
equals the same sample run alone, and runs ``cr-edge profile`` at those sizes.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from reliability.helpers import run

BATCHES = (1, 2, 7, 512)


@pytest.mark.parametrize("name", ["model.onnx", "model.jvp.onnx", "model.ort", "model.jvp.ort"])
def test_every_batch_size_runs_and_agrees_row_by_row(exported, name):
    with np.load(exported / "model.ref.npz") as f:
        pool = f["x"]
    session = ort.InferenceSession(str(exported / name), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(11)
    for batch in BATCHES:
        x = pool[rng.integers(0, len(pool), batch)]
        feeds = {i.name: x for i in session.get_inputs()}  # x, and v = x for the companion
        outputs = session.run(None, feeds)
        assert all(o.shape[0] == batch for o in outputs), (name, batch, [o.shape for o in outputs])
        single = session.run(None, {k: v[-1:] for k, v in feeds.items()})
        for o, s in zip(outputs, single, strict=True):
            np.testing.assert_allclose(o[-1:], s, rtol=1e-5, atol=1e-5)


def test_profile_runs_every_batch_size(exported):
    sizes = ",".join(map(str, BATCHES))
    result = run(
        "profile",
        exported / "model.onnx",
        "--batch",
        sizes,
        "--iters",
        "3",
        "--warmup",
        "1",
        "--no-memory",
    )
    assert result.exit_code == 0, result.output
