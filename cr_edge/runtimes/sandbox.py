"""Open an untrusted model in a child process first, so a crash in onnx/onnxruntime is an error.

ONNX Runtime fuzzes its loaders and still receives crash reports on malformed
models, and ``onnx.checker`` has segfaulted on files ORT refused cleanly. A signal
in the process that runs ``validate`` or ``profile`` would end cr-edge with no
message. So before ``validate`` or ``profile`` opens a model (from the CLI or the API), a child parses it and creates a CPU
session under a time limit and an address-space limit; if the child dies from a
signal or runs out of time, the file is refused with an ``InputError``. A Python
exception in the child is not our concern here: the same load in the parent
raises it as the usual typed error. numpy + onnxruntime only, never torch.

Run as ``python -m cr_edge.runtimes.sandbox PATH`` it is that child.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from cr_edge.artifacts.child import run_python
from cr_edge.errors import InputError

TIMEOUT_S = 120  # a small model loads in well under a second; a hang is not a load
MEMORY_LIMIT = 4 << 30  # address space of the child, bytes: far above any edge model's need


def sandboxed_load(
    path: Path, timeout_s: float | None = None, memory_limit: int | None = None
) -> None:
    """Load ``path`` in a limited child; ``InputError`` if it crashes or hangs there.

    A path that is not a file is left to the parent's checks, which name what is wrong.
    """
    path = Path(path)
    if not path.is_file():
        return
    timeout_s = TIMEOUT_S if timeout_s is None else timeout_s
    memory_limit = MEMORY_LIMIT if memory_limit is None else memory_limit
    try:
        done = run_python(child_args(path), timeout_s, _limits(memory_limit))
    except subprocess.TimeoutExpired as e:
        raise InputError(
            f"{path}: onnxruntime took longer than {timeout_s:g} s to load it; refusing the file"
        ) from e
    if done.returncode < 0:
        raise InputError(
            f"{path}: onnxruntime crashed (signal {-done.returncode}) while loading it; "
            "the file is malformed or hostile"
        )


def child_args(path: Path) -> list[str]:
    """The child's arguments to ``python``: this module as a script, given the model's path."""
    return ["-m", "cr_edge.runtimes.sandbox", str(path)]


def _limits(memory_limit: int):
    def apply() -> None:
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (memory_limit, memory_limit))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # a crash leaves no core file

    return apply


def _load(path: Path) -> None:
    """What the parent is about to do: check and parse the file, then create a CPU session."""
    from cr_edge.runtimes.registry import get_runtime
    from cr_edge.runtimes.safe_load import check_artifact

    artifact = check_artifact(path)
    if artifact.kind in ("onnx", "ort"):
        get_runtime("cpu").load(artifact)


if __name__ == "__main__":
    _load(Path(sys.argv[1]))
