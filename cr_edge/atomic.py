"""Atomic file writes: a crash or a kill never leaves a half-written artifact.

Every writer in cr-edge goes through here. Data lands in a temporary file in the
destination folder, is fsync'ed, and is renamed over the final name with
``os.replace`` (atomic on POSIX and Windows within one filesystem). Files that a
tool writes itself (onnxruntime's ORT converter) are built beside the destination
and published with ``move_into_place``, the same fsync-then-rename.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np

from cr_edge.errors import InputError


@contextlib.contextmanager
def atomic_open(path: Path, mode: str = "wb") -> Iterator[IO[Any]]:
    """Yield a file handle whose content appears under ``path`` only if the block succeeds."""
    path = Path(path)
    folder = path.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    except OSError as e:
        raise InputError(
            f"{folder}: cannot write here ({e.strerror}); choose a writable --out"
        ) from e
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        _discard(tmp)
        raise InputError(
            f"{path}: write failed ({e.strerror}); check free space and permissions"
        ) from e
    except BaseException:
        _discard(tmp)
        raise
    _fsync_dir(folder)


def write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_open(path, "wb") as f:
        f.write(data)


def write_text(path: Path, text: str) -> None:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    write_bytes(path, text.encode("utf-8"))


def write_json(path: Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically; every JSON file cr-edge writes comes here.

    JSON has no NaN or Inf, and a broken model's figures hold them: they are written as
    the strings ``"NaN"``, ``"Infinity"`` and ``"-Infinity"`` (see ``json_safe``).
    """
    write_text(path, json.dumps(json_safe(obj), indent=2, allow_nan=False) + "\n")


def json_safe(obj: Any) -> Any:
    """``obj`` with each non-finite float as the string ``"NaN"``, ``"Infinity"`` or ``"-Infinity"``."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return "NaN" if math.isnan(obj) else ("Infinity" if obj > 0 else "-Infinity")
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v) for v in obj]
    return obj


def write_npz(path: Path, **arrays: np.ndarray) -> None:
    """Write numeric arrays as an uncompressed .npz, atomically; object arrays are refused."""
    for name, arr in arrays.items():
        if np.asarray(arr).dtype == object:
            raise InputError(
                f"{path}: array {name!r} has dtype object; only numeric arrays are saved"
            )
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    write_bytes(path, buf.getvalue())


def move_into_place(built: Path, final: Path) -> None:
    """Publish a file another tool wrote: fsync it, rename it over ``final``, fsync the folder.

    ``built`` must be on the same filesystem as ``final`` (build it in a folder beside it).
    """
    try:
        with open(built, "rb") as f:
            os.fsync(f.fileno())
        os.replace(built, final)
    except OSError as e:
        raise InputError(
            f"{final}: write failed ({e.strerror}); check free space and permissions"
        ) from e
    _fsync_dir(Path(final).parent)


def _discard(tmp: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)


def _fsync_dir(folder: Path) -> None:
    # The rename must reach the disk for the write to survive a power cut. Some
    # filesystems refuse to fsync a directory; the rename has happened either way.
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def refuse_existing(out: Path, marker: str, force: bool) -> None:
    """``InputError`` if ``out`` is a file, or already holds ``marker`` and ``force`` is off.

    Every stage calls this before writing, from the CLI and the Python API alike, so
    no caller overwrites a finished folder without asking for it.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out}: exists and is not a folder; choose another path")
    if (out / marker).exists() and not force:
        raise InputError(f"--out {out}: already holds {marker}; pass --force to overwrite")
