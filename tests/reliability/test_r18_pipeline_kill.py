"""Row 18: SIGKILL during ``cr-edge pipeline`` leaves no partial file, and a rerun completes.

The pipeline (train, export, quantize, validate, profile, summary) is run once to the
end with every file write into its folder recorded, then SIGKILLed inside such writes
(``killpoint``: half the bytes on disk, then the signal), each time over the previous
run's folder with ``--force``; the kill points are spread over the run, one from each
stretch of its writes, so they reach every stage. Each of them is a write that lands
under a final name unless the atomic writer moves it there only once complete. After
every kill each final file must parse, and each stage folder whose manifest says it is
complete must match it byte for byte (a finished stage stays intact whatever comes
after). Then the same command, without ``--force``, must finish the run: the killed
run marked its folder incomplete. ``CR_EDGE_PIPELINE_KILLS`` kills here (2;
``bench/reliability.py`` runs 12).
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

from cr_edge.artifacts.manifest import MANIFEST, is_incomplete, verify
from cr_edge.errors import InputError
from reliability.helpers import partial_files, run_process
from reliability.kills import KillTally, kill_in_write, spread_points, written_files

KILLS = int(os.environ.get("CR_EDGE_PIPELINE_KILLS", "2"))
# No certification on the emulated device: it writes through the same writers and takes
# minutes of qemu per run; tests/test_devices_certify.py covers it.
ARGS = [
    "pipeline",
    "--recipe",
    "digits-cr",
    "--epochs",
    "1",
    "--runtime",
    "cpu",
    "--certify-on",
    "none",
]


def changed_complete_folders(out: Path) -> list[str]:
    """Stage folders that say they are complete but whose files differ from their manifest."""
    bad = []
    for manifest in out.rglob(MANIFEST):
        folder = manifest.parent
        if is_incomplete(folder):
            continue
        try:
            for name in json.loads(manifest.read_text())["files"]:
                verify(folder / name)
        except (InputError, OSError, ValueError, KeyError) as e:
            bad.append(f"{folder.name}: {e}")
    return bad


def kill_pipeline(out: Path, kills: int, seed: int):
    """Kill the pipeline ``kills`` times; return (tally, changed complete folders, rerun)."""
    args = [*ARGS, "--force", "--out", out]
    writes = written_files(args, under=out)  # the complete run; its writes into ``out``
    tally, changed = KillTally(), []
    for kill_at in spread_points(len(writes), kills, seed):
        tally.runs += 1
        tally.killed += kill_in_write(args, kill_at, under=out) == -signal.SIGKILL
        tally.partial += [f"{out.name}/{p}" for p in partial_files(out)]
        changed += changed_complete_folders(out)
    rerun = run_process(*ARGS, "--out", out, timeout=900)
    return tally, changed, rerun


@pytest.mark.slow
def test_sigkill_during_the_pipeline_leaves_no_partial_file_and_a_rerun_completes(tmp_path):
    out = tmp_path / "run"
    tally, changed, rerun = kill_pipeline(out, KILLS, seed=18)
    print(
        f"row 18: {tally.runs} pipelines killed ({tally.killed} mid-way), "
        f"{len(tally.partial)} partial files, rerun exit {rerun.returncode}"
    )
    assert tally.killed == tally.runs == KILLS  # every kill point is a write the run makes
    assert not tally.partial, tally.partial
    assert not changed, changed
    assert rerun.returncode in (0, 1), rerun.stderr[-2000:]  # 1: a check failed, said so
    assert (out / "summary.json").is_file() and not is_incomplete(out)
    assert "Traceback" not in rerun.stderr
