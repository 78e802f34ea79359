"""Row 19: 8 ``validate`` and 8 ``profile`` runs at once on one artifact all pass.

Sixteen processes read the same export at the same moment (profile with per-op
traces and the memory child, validate with the sandbox child and JSON reports), so
any fixed temporary name would collide. Meanwhile this test holds the folder's
writer lock itself: readers take no writer lock, so none of them may be turned
away by it. The folder's files must be unchanged, and no temporary file is left.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from cr_edge.artifacts.folder_lock import writing
from reliability.helpers import REPO, cli_command, hashes

READERS = 8


def read_concurrently(exported: Path, work: Path, readers: int) -> list[str]:
    """``readers`` validates and as many profiles of one model at once; what failed."""
    model = exported / "model.onnx"
    commands = [
        cli_command("validate", model, "--runtime", "cpu", "--json", work / f"v{i}.json")
        for i in range(readers)
    ] + [
        cli_command(
            *("profile", model, "--runtime", "cpu", "--iters", "100", "--warmup", "5"),
            *("--per-op", "--json", work / f"p{i}.json"),
        )
        for i in range(readers)
    ]
    with writing(exported, "export"):  # a writer holds the folder: readers must not care
        procs = [
            subprocess.Popen(
                c, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
            )
            for c in commands
        ]
        done = [(p.wait(timeout=900), p.stderr.read()) for p in procs]
    failures = [err[-300:] for code, err in done if code != 0]
    for i in range(readers):
        for name in (f"v{i}.json", f"p{i}.json"):
            report = json.loads((work / name).read_text()) if (work / name).is_file() else {}
            if not (report.get("passed") if name[0] == "v" else report.get("results")):
                failures.append(f"{name}: missing or failed report")
    return failures


@pytest.mark.slow
def test_eight_validates_and_eight_profiles_at_once_all_pass(exported, tmp_path):
    before = hashes(exported)
    failures = read_concurrently(exported, tmp_path, READERS)
    print(f"row 19: {READERS}+{READERS} concurrent readers, {len(failures)} failures")
    assert not failures, failures
    assert hashes(exported) == before
    assert not list(exported.rglob("*.tmp"))
