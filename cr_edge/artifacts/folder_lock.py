"""One writer per output folder: the lock that train, export, quantize, pipeline and fairfight take.

Two commands writing into one folder at once interleave their files: one run dies on
the other's half-made model, and the folder ends up holding a mixture. Every writer
therefore holds ``FOLDER/.cr-edge.lock`` for as long as it writes there, through
``filelock`` (an ``fcntl.flock`` lock on POSIX, ``LockFileEx`` on Windows). The
operating system drops such a lock when its process ends, however it ends, so the
lock of a killed writer is free: the next writer takes it over and says so.

The lock file holds the holder's pid, command and start time, so a second writer is
refused with one line naming who is writing. A writer that finishes removes the file
(while still holding it); one that is killed leaves it, which is how the next writer
knows it is taking over from an interrupted run. Readers (validate, profile) take no lock
at all; they read the folder's manifest instead, which says whether the folder is
complete (see ``cr_edge.artifacts.manifest``). This module marks the folder as being written
right before the first file under it changes, not when the lock is taken: a writer
that stops on bad input before writing anything leaves the folder as it was.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from filelock import FileLock, Timeout

from cr_edge.artifacts import atomic, manifest
from cr_edge.errors import InputError

LOCK_NAME = ".cr-edge.lock"
_command: str | None = None  # what this process is, for other writers' messages


def describe_process(command: str) -> None:
    """Name this process in the locks it takes, e.g. ``cr-edge pipeline`` (the CLI sets it)."""
    global _command
    _command = command


@contextlib.contextmanager
def writing(folder: Path, stage: str) -> Iterator[Path]:
    """Hold ``folder``'s writer lock for the block; ``InputError`` if another process holds it.

    ``stage`` (train, export, quantize, pipeline, fairfight) names what an interrupted
    folder needs rerun. The folder is created if need be, and removed again if the
    block wrote nothing into it.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise InputError(f"--out {folder}: exists and is not a folder; choose another path")
    created = not folder.exists()
    atomic.make_folder(folder)
    command = _command or f"cr-edge {stage}"
    holder = {"pid": os.getpid(), "command": command, "started": _now()}
    previous: list[dict] = []
    lock = FileLock(
        folder / LOCK_NAME,
        timeout=0,
        fallback_to_soft=False,
        on_acquired=lambda fd: previous.extend(_take(fd, holder)),
    )
    try:
        lock.acquire()
    except Timeout:
        raise InputError(
            f"{folder} is being written by {_holder_text(read_holder(folder))}; "
            "wait for it to finish or choose another --out"
        ) from None
    except OSError as e:
        raise InputError(
            f"{folder}: cannot lock it for writing ({e.strerror or e}); choose a writable --out"
        ) from e
    for stale in previous:
        print(
            f"note: {folder}: taking over from {_holder_text(stale)}, which stopped without "
            "finishing; rewriting the folder",
            file=sys.stderr,
        )
    atomic.on_first_write(folder, lambda: manifest.mark_writing(folder, stage, command))
    try:
        yield folder
    finally:
        atomic.forget(folder)
        with contextlib.suppress(OSError):
            (folder / LOCK_NAME).unlink()  # while still held: a finished folder has no lock file
            if created:
                folder.rmdir()  # only if empty: a writer refused before writing leaves no trace
        lock.release()


def holds_out(stage: str, where: str = "out") -> Callable[[Callable], Callable]:
    """Decorate a writer: the call holds the lock of its folder, the argument ``where`` names.

    ``where`` is an argument's name, or a dotted path into one (``config.out``).
    """
    name, *attributes = where.split(".")

    def wrap(fn: Callable) -> Callable:
        signature = inspect.signature(fn)

        @functools.wraps(fn)
        def locked(*args, **kwargs):
            folder = signature.bind(*args, **kwargs).arguments[name]
            for attribute in attributes:
                folder = getattr(folder, attribute)
            with writing(folder, stage):
                return fn(*args, **kwargs)

        return locked

    return wrap


def read_holder(folder: Path) -> dict:
    """What the lock file of ``folder`` says about its holder; empty if it says nothing."""
    try:
        doc = json.loads((Path(folder) / LOCK_NAME).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


def _take(fd: int, holder: dict) -> list[dict]:
    """Write ``holder`` into the just-acquired lock file; return a holder left by a killed run."""
    os.lseek(fd, 0, os.SEEK_SET)
    left = os.read(fd, 4096)
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, json.dumps(holder).encode("utf-8"))
    if not left.strip():
        return []
    try:
        stale = json.loads(left)
    except ValueError:
        return [{}]
    return [stale if isinstance(stale, dict) else {}]


def _holder_text(holder: dict) -> str:
    if "pid" not in holder:
        return "another cr-edge process"
    return f"pid {holder['pid']} ({holder.get('command', 'cr-edge')}, started {holder.get('started', '?')})"


def _now() -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
