"""Row 14: inputs 100x outside the training range stay finite and are flagged by sensitivity.

The domain guard clips each polynomial's input to its calibrated range plus a
margin, so the network's output can grow no further than at the edge of that box;
the per-sample DREG sensitivity output exceeds its training p99 (recorded in the
model's metadata) for such inputs, which is how a deployment notices them.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort

FACTOR = 100.0


def test_inputs_at_100x_range_stay_finite_and_are_flagged(sensitive):
    model = sensitive / "model.onnx"
    meta = {p.key: p.value for p in onnx.load(model).metadata_props}
    p99 = float(meta["cr_edge.sensitivity_p99"])
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    with np.load(sensitive / "model.ref.npz") as f:
        x = f["x"]
    y_train, _ = session.run(None, {"x": x})
    far = np.concatenate([x * FACTOR, -x * FACTOR, np.full_like(x, FACTOR * np.abs(x).max())])
    y, sensitivity = session.run(None, {"x": far.astype(np.float32)})
    assert np.isfinite(y).all() and np.isfinite(sensitivity).all()
    # Clipped: the logits stay within a few times their training range, not 100**3 times it.
    assert np.abs(y).max() <= 10 * np.abs(y_train).max(), (np.abs(y).max(), np.abs(y_train).max())
    flagged = (sensitivity > p99).mean()
    print(
        f"row 14: 0 Inf/NaN at {FACTOR:g}x range; {flagged:.0%} of samples above sensitivity p99 {p99:g}"
    )
    assert flagged >= 0.9
