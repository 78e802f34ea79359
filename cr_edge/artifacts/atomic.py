"""Atomic file writes: a crash or a kill never leaves a half-written artifact.

Every file cr-edge leaves behind goes through here (scratch files in a temporary
folder removed afterwards, such as the quantizers' inputs or profile's dispatch-floor
twin, are never seen by a user and need not). Data lands in a temporary file in the
destination folder, is fsync'ed, and is renamed over the final name with ``os.replace`` (atomic on POSIX and Windows within one filesystem). Files that a
tool writes itself (onnxruntime's ORT converter) are built beside the destination
and published with ``move_into_place``, the same fsync-then-rename.

The temporary file is created with mode 0666 and the kernel applies the umask (and
any default ACL), as for any file a program writes: 0644 under umask 022, so a model
served by another user's process or copied into an app bundle can be read.
``tempfile.mkstemp`` would make it 0600 whatever the umask.

A folder held by ``cr_edge.artifacts.folder_lock`` is marked as being written right before the
first file under it changes (``on_first_write``), so a kill at any later moment
leaves a folder that says it is incomplete.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np

from cr_edge.errors import InputError

_TEMP_FLAGS = (
    os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
)
_first_write: dict[Path, Callable[[], None]] = {}


def make_folder(folder: Path) -> None:
    """Create ``folder`` (and its parents); an ``InputError`` naming it if that is impossible."""
    try:
        Path(folder).mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(
            f"{folder}: cannot write here ({e.strerror}); choose a writable --out"
        ) from e


def on_first_write(folder: Path, callback: Callable[[], None]) -> None:
    """Run ``callback`` once, just before the first atomic write to a file under ``folder``."""
    _first_write[Path(folder).resolve()] = callback


def forget(folder: Path) -> None:
    """Drop ``folder``'s pending ``on_first_write`` callback, if it never ran."""
    _first_write.pop(Path(folder).resolve(), None)


@contextlib.contextmanager
def atomic_open(path: Path, mode: str = "wb") -> Iterator[IO[Any]]:
    """Yield a file handle whose content appears under ``path`` only if the block succeeds."""
    path = Path(path)
    folder = path.parent
    make_folder(folder)
    _before_write(folder)
    try:
        fd, tmp = _create_temp(folder, path.name)
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
    _before_write(Path(final).parent)
    try:
        with open(built, "rb") as f:
            os.fsync(f.fileno())
        os.replace(built, final)
    except OSError as e:
        raise InputError(
            f"{final}: write failed ({e.strerror}); check free space and permissions"
        ) from e
    _fsync_dir(Path(final).parent)


def _before_write(folder: Path) -> None:
    resolved = folder.resolve()
    for held in [f for f in _first_write if resolved == f or f in resolved.parents]:
        _first_write.pop(held)()  # popped first: the callback itself writes atomically


def _create_temp(folder: Path, name: str) -> tuple[int, str]:
    """A new hidden file beside the final name, mode 0666 minus the umask."""
    for _ in range(100):
        tmp = str(folder / f".{name}.{secrets.token_hex(6)}.tmp")
        try:
            return os.open(tmp, _TEMP_FLAGS, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary name for {name} in {folder}")


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
