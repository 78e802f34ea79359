"""Row 16: every file cr-edge writes has the mode the umask gives, 0644 under umask 022.

A child interpreter sets the umask and runs train, export (onnx, companion, oracle,
.ort and its config, .pte and its info), quantize (int8 models, .ort copies,
report), validate --json, profile --json --plot and a pipeline, in process; every
final file must then be ``0666 & ~umask``. Umask 027 is tried as well (no .pte, to
stay fast), so the modes follow the umask rather than being 0644 by chance. CI runs
as root, which reads any file whatever its mode: the check is on the mode bits, not
on whether another account can open the file.
"""

from __future__ import annotations

import json
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from cr_edge.pipeline import executorch_installed
from reliability.helpers import REPO, final_files

CHILD = """
import json, os, sys
from click.testing import CliRunner
from cr_edge.cli import cli
os.umask(int(sys.argv[1], 8))
for args in json.loads(sys.argv[2]):
    done = CliRunner().invoke(cli, args)
    if done.exit_code not in (0, 1):  # 1: a check failed on a 1-epoch net, files still written
        sys.exit(f"{args[0]} exited {done.exit_code}: {done.output[-2000:]}")
"""


def commands(work: Path, pte: bool) -> list[list[str]]:
    ck, ex, q = work / "checkpoint", work / "export", work / "quantized"
    targets = "onnx,ort,executorch" if pte else "onnx,ort"
    return [
        ["train", "--recipe", "digits-cr", "--epochs", "1", "--out", str(ck)],
        ["export", str(ck), "--out", str(ex), "--format", targets],
        ["quantize", str(ex / "model.onnx"), "--out", str(q), "--mode", "dynamic", "--ort"],
        ["validate", str(ex / "model.onnx"), "--runtime", "cpu", "--json", str(work / "v.json")],
        [
            *("profile", str(ex / "model.onnx"), "--iters", "5", "--no-memory"),
            *("--json", str(work / "p.json"), "--plot", str(work / "p.png")),
        ],
    ]


def write_everything(work: Path, umask: int, pte: bool) -> None:
    done = subprocess.run(
        [sys.executable, "-c", CHILD, oct(umask), json.dumps(commands(work, pte))],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]


def modes(work: Path) -> dict[str, int]:
    return {str(p.relative_to(work)): stat.S_IMODE(p.stat().st_mode) for p in final_files(work)}


@pytest.mark.slow
@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_every_file_kind_follows_the_umask(tmp_path, umask):
    pte = umask == 0o022 and executorch_installed()
    write_everything(tmp_path, umask, pte)
    found = modes(tmp_path)
    kinds = {Path(name).suffix for name in found}
    expected = {".safetensors", ".npz", ".json", ".onnx", ".ort", ".config", ".png"}
    assert expected | ({".pte"} if pte else set()) <= kinds, kinds
    want = 0o666 & ~umask
    wrong = {name: oct(mode) for name, mode in found.items() if mode != want}
    print(f"row 16: umask {umask:03o}: {len(found)} files, {len(kinds)} kinds, {len(wrong)} wrong")
    assert not wrong, f"want {want:o}: {wrong}"
