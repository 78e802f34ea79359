"""Row 7: SIGKILL during train, export and quantize leaves no partial file under a final name.

Each command is killed at seeded random points — at a random time, and inside a
random file write (``killpoint``) — three times each here, more in
``bench/reliability.py``, writing over the previous run's folder with ``--force``.
After every kill each final file must parse (JSON, safetensors, npz, ONNX, ORT), and
the artifacts made before the loop must be byte-identical afterwards.
"""

from __future__ import annotations

import pytest

from reliability.helpers import EXPORT_ARGS, hashes
from reliability.kills import kill_loop

KILLS = 3


@pytest.mark.slow
def test_sigkill_at_random_points_leaves_no_partial_file(checkpoint, exported, tmp_path):
    earlier = {folder: hashes(folder) for folder in (checkpoint, exported)}
    runs = {
        "train": ["train", "--recipe", "digits-cr", "--epochs", "3", "--force"],
        "export": ["export", checkpoint, *EXPORT_ARGS, "--force"],
        "quantize": ["quantize", exported / "model.onnx", "--mode", "dynamic", "--force"],
    }
    partial, killed = [], 0
    for seed, (name, args) in enumerate(runs.items()):
        out = tmp_path / name
        tally = kill_loop([*args, "--out", out], out, KILLS, seed)
        partial += tally.partial
        killed += tally.killed
    print(f"row 7: {len(runs) * KILLS} runs, {killed} killed mid-way, {len(partial)} partial files")
    assert not partial, partial
    assert killed >= len(runs) * (KILLS // 2)  # every kill inside a write did land
    assert {folder: hashes(folder) for folder in earlier} == earlier
