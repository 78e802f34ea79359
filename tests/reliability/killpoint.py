"""Run ``cr-edge`` and SIGKILL it in the middle of its N-th file write: the worst moment.

Random kill times mostly land between writes, where any writer looks atomic. This
harness lands one inside a write: every file opened for writing (``open`` and
``os.fdopen``) is wrapped, and the N-th ``write`` call puts half of its bytes on
disk and then kills the process. An atomic writer leaves only a temporary file; a
writer that opens the final name directly leaves it half-written.

With ``CR_EDGE_KILL_UNDER=FOLDER`` only writes into files under that folder count:
the writes of the command's own artifacts (their temporary files, or without the
atomic writer their final names), not a library's caches, whose number can differ
from one run to the next. ``written`` lists the file of every counted write.

``python -m reliability.killpoint N cr-edge-args...`` (with ``tests`` on the path).
"""

from __future__ import annotations

import builtins
import os
import signal
import sys

_count = 0
written: list[str] = []  # the file of each counted write, in order
UNDER = os.environ.get("CR_EDGE_KILL_UNDER")


class _Dying:
    """A writable file whose ``kill_at``-th write (counted process-wide) is cut in half."""

    def __init__(self, f, kill_at: int, path: str) -> None:
        self._f, self._kill_at, self._path = f, kill_at, path

    def write(self, data):
        global _count
        _count += 1
        written.append(self._path)
        if _count == self._kill_at:
            self._f.write(data[: len(data) // 2])
            self._f.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        return self._f.write(data)

    def __enter__(self):
        self._f.__enter__()
        return self

    def __exit__(self, *exc):
        return self._f.__exit__(*exc)

    def __getattr__(self, name):
        return getattr(self._f, name)

    def __iter__(self):
        return iter(self._f)


def _wrapping(opener, kill_at: int):
    def wrapped(file, mode="r", *args, **kwargs):
        f = opener(file, mode, *args, **kwargs)
        if not any(c in mode for c in "wax+"):
            return f
        path = _path_of(file)
        counted = UNDER is None or path.startswith(os.path.realpath(UNDER) + os.sep)
        return _Dying(f, kill_at, path) if counted else f

    return wrapped


def _path_of(file) -> str:
    """The real path of what is opened: a name, or (``os.fdopen``) a descriptor's file."""
    if isinstance(file, int):
        try:
            return os.readlink(f"/proc/self/fd/{file}")
        except OSError:
            return f"<fd {file}>"
    return os.path.realpath(os.fspath(file))


def main() -> None:
    kill_at = int(sys.argv[1])
    builtins.open = _wrapping(builtins.open, kill_at)
    os.fdopen = _wrapping(os.fdopen, kill_at)
    sys.argv = ["cr-edge", *sys.argv[2:]]
    from cr_edge.cli import main as cli_main

    cli_main()


if __name__ == "__main__":
    main()
