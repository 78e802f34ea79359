"""Reading .npz files of numbers: never unpickling, no header trusted, every failure one line.

Every .npz cr-edge reads comes through here: user data files (``cr_edge.data``),
calibration sets, checkpoints' ``calib.npz`` and parity oracles. Before numpy
allocates an array, its .npy header is checked against the bytes actually present
(a header can claim any shape), and object dtypes are refused (loading them runs
pickle). numpy only, so the torch-free runtimes can use it too.
"""

from __future__ import annotations

import math
import zipfile
import zlib
from pathlib import Path

import numpy as np

from cr_edge.errors import InputError

_CHUNK = 1 << 20
# Deflate cannot expand data more than ~1032:1; a zip entry claiming more is lying about its size.
_MAX_DEFLATE_RATIO = 1100
# What zipfile and numpy raise on a damaged archive (RuntimeError: encrypted entry,
# NotImplementedError: unknown compression, OverflowError: a size field beyond any seek);
# each becomes one InputError line.
_ZIP_ERRORS = (
    ValueError,
    EOFError,
    OSError,
    OverflowError,
    KeyError,
    zipfile.BadZipFile,
    zlib.error,
    RuntimeError,
    NotImplementedError,
)


def read_npz(
    path: Path, names: tuple[str, ...] | None = None, hint: str = "save it with numpy.savez"
) -> dict[str, np.ndarray]:
    """The arrays ``names`` of ``path`` (default: all), each checked before it is read.

    ``hint`` ends the messages about the file's layout: how to write a good one.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: not found, or not a file")
    with path.open("rb") as f:
        if f.read(6) == b"\x93NUMPY":  # np.load would allocate whatever shape its header claims
            raise InputError(f"{path}: a single .npy array, not an .npz archive; {hint}")
    try:
        archive = np.load(path, allow_pickle=False)
    except _ZIP_ERRORS as e:
        raise InputError(f"{path}: not a readable .npz archive ({_short(e)}); {hint}") from e
    with archive:
        wanted = archive.files if names is None else names
        return {name: _array(archive, name, path, hint) for name in wanted}


def _array(archive: np.lib.npyio.NpzFile, name: str, path: Path, hint: str) -> np.ndarray:
    if name not in archive.files:
        raise InputError(f"{path}: no array {name!r} (found {_short(archive.files)}); {hint}")
    member = name + ".npy" if name + ".npy" in archive.zip.namelist() else name
    try:
        _check_npy_entry(archive.zip, member, path, name, hint)
        return archive[name]
    except _ZIP_ERRORS as e:
        raise InputError(
            f"{path}: array {name!r} is unreadable ({_short(e)}); the file is corrupt"
        ) from e


def _check_npy_entry(zf: zipfile.ZipFile, member: str, path: Path, name: str, hint: str) -> None:
    """Refuse object dtypes and size lies in the .npy header before numpy allocates anything."""
    info = zf.getinfo(member)
    max_size = _MAX_DEFLATE_RATIO * min(info.compress_size, path.stat().st_size) + _CHUNK
    if info.file_size > max_size:
        raise InputError(
            f"{path}: array {name!r} claims {info.file_size} bytes; the archive is corrupt"
        )
    with zf.open(info) as f:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, _, dtype = np.lib.format.read_array_header_2_0(f)
        else:
            raise InputError(f"{path}: array {name!r} uses .npy format {version}; {hint}")
        payload = info.file_size - f.tell()
    if dtype.hasobject:
        raise InputError(
            f"{path}: array {name!r} holds pickled Python objects (refused: loading them could run code); "
            "save a numeric array"
        )
    if dtype.kind not in "biuf":
        raise InputError(
            f"{path}: array {name!r} has dtype {dtype}; save it as a real-number array"
        )
    if math.prod(shape) * dtype.itemsize != payload:
        raise InputError(
            f"{path}: array {name!r} header says shape {shape} of {dtype} "
            f"but holds {payload} bytes; the file is truncated or corrupt"
        )


def _short(value: object, limit: int = 60) -> str:
    """repr() cut short, so a damaged archive cannot turn an error into a wall of text."""
    text = repr(value if isinstance(value, list) else str(value))
    return text if len(text) <= limit else text[: limit - 3] + "..."
