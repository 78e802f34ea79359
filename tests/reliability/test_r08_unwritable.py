"""Row 8: a read-only or full output folder gives a clean error and corrupts nothing earlier.

CI runs as root, which ignores permission bits: "read-only" is a folder under a
regular file (no one can create it). A full disk is ``RLIMIT_FSIZE`` in the child,
with SIGXFSZ ignored so that a too-large write fails with EFBIG as on a full disk.
"""

from __future__ import annotations

import resource
import shutil
import signal

import pytest

from reliability.helpers import EXPORT_ARGS, hashes, one_line_error, partial_files, run, run_process

LIMIT = 64 * 1024  # bytes per file: the ONNX models fit, the oracle and calibration do not


def full_disk() -> None:
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (LIMIT, LIMIT))


@pytest.mark.parametrize("command", ["train", "export", "quantize", "validate --json"])
def test_unwritable_output_folder_is_a_clean_error(tmp_path, checkpoint, exported, command):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    out = blocker / "out"
    args = {
        "train": ["train", "--recipe", "digits-cr", "--epochs", "1", "--out", out],
        "export": ["export", checkpoint, "--out", out],
        "quantize": ["quantize", exported / "model.onnx", "--out", out, "--mode", "dynamic"],
        "validate --json": [
            "validate",
            exported / "model.onnx",
            "--runtime",
            "cpu",
            "--json",
            out / "r.json",
        ],
    }[command]
    before = {f: hashes(f) for f in (checkpoint, exported)}
    result = run(*args)
    assert result.exit_code == 2, result.output
    assert str(blocker) in one_line_error(result)
    assert blocker.read_text() == "not a folder"
    assert {f: hashes(f) for f in before} == before


@pytest.mark.slow
@pytest.mark.parametrize("command", ["train", "export", "quantize"])
def test_full_disk_is_a_clean_error_and_earlier_files_stay_intact(
    tmp_path, checkpoint, exported, command
):
    out = tmp_path / "out"
    if command == "train":
        shutil.copytree(checkpoint, out)
        args = ["train", "--recipe", "digits-cr", "--epochs", "2", "--out", out, "--force"]
    elif command == "export":
        shutil.copytree(exported, out)
        args = ["export", checkpoint, "--out", out, *EXPORT_ARGS, "--force"]
    else:
        args = ["quantize", exported / "model.onnx", "--out", out, "--mode", "dynamic"]
        run(*args)  # an earlier, complete quantization in the same folder
        args.append("--force")
    before = hashes(out)
    sources = {f: hashes(f) for f in (checkpoint, exported)}
    done = run_process(*args, preexec_fn=full_disk)
    assert done.returncode == 2, done.stderr
    line = one_line_error(done)
    assert "File too large" in line or "free space" in line, line
    assert partial_files(out) == []
    assert set(before) <= set(hashes(out))  # every earlier file is still there, and parses
    assert {f: hashes(f) for f in sources} == sources


@pytest.mark.parametrize("command", ["validate", "profile"])
def test_an_artifact_changed_after_writing_is_refused(tmp_path, exported, command):
    """The manifest, written last, is how a corrupted earlier artifact is noticed at all."""
    folder = tmp_path / "ex"
    shutil.copytree(exported, folder)
    data = bytearray((folder / "model.onnx").read_bytes())
    data[-1] ^= 1  # one flipped bit: still a loadable model
    (folder / "model.onnx").write_bytes(bytes(data))
    extra = ["--iters", "1", "--no-memory"] if command == "profile" else []
    result = run(command, folder / "model.onnx", "--runtime", "cpu", *extra)
    assert result.exit_code == 2, result.output
    assert "changed since it was written" in one_line_error(result)
