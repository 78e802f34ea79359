"""NPZ files of arrays ``x`` and ``y``, read without unpickling.

No header is trusted with an allocation size before it has been checked against the
bytes actually present.
"""

from __future__ import annotations

import math
import zipfile
import zlib
from pathlib import Path

import numpy as np

from cr_edge.data.records import RawData, encode_labels, first_bad, require_file, show
from cr_edge.data.target_kind import check_classes
from cr_edge.errors import InputError

_CHUNK = 1 << 20
# Deflate cannot expand data more than ~1032:1; a zip entry claiming more is lying about its size.
_MAX_DEFLATE_RATIO = 1100
_NPZ_HINT = "save it with numpy.savez(path, x=features, y=labels)"
# What zipfile and numpy raise on a damaged archive (RuntimeError: encrypted entry,
# NotImplementedError: unknown compression, OverflowError: a size field beyond any seek);
# each becomes one InputError line.
_ZIP_ERRORS = (
    ValueError,
    EOFError,
    OSError,
    OverflowError,
    zipfile.BadZipFile,
    zlib.error,
    RuntimeError,
    NotImplementedError,
)


def load_npz(path: Path) -> RawData:
    """An ``.npz`` archive with a float array ``x`` (n, ...) and an integer array ``y`` (n,)."""
    path = Path(path)
    require_file(path)
    with path.open("rb") as f:
        if f.read(6) == b"\x93NUMPY":  # np.load would allocate whatever shape its header claims
            raise InputError(f"{path}: a single .npy array, not an .npz archive; {_NPZ_HINT}")
    try:
        archive = np.load(path, allow_pickle=False)
    except _ZIP_ERRORS as e:
        raise InputError(
            f"{path}: not a readable .npz archive ({show(str(e), 60)}); {_NPZ_HINT}"
        ) from e
    with archive:
        x = _npz_array(archive, "x", path)
        y = _npz_array(archive, "y", path)
    return _npz_raw(x, y, path)


def _npz_array(archive: np.lib.npyio.NpzFile, name: str, path: Path) -> np.ndarray:
    if name not in archive.files:
        raise InputError(
            f"{path}: no array {name!r} (found {show(archive.files, 60)}); {_NPZ_HINT}"
        )
    member = name + ".npy" if name + ".npy" in archive.zip.namelist() else name
    try:
        _check_npy_entry(archive.zip, member, path, name)
        return archive[name]
    except _ZIP_ERRORS as e:
        raise InputError(
            f"{path}: array {name!r} is unreadable ({show(str(e), 60)}); the file is corrupt"
        ) from e


def _check_npy_entry(zf: zipfile.ZipFile, member: str, path: Path, name: str) -> None:
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
            raise InputError(f"{path}: array {name!r} uses .npy format {version}; {_NPZ_HINT}")
        payload = info.file_size - f.tell()
    if dtype.hasobject:
        raise InputError(
            f"{path}: array {name!r} holds Python objects (refused: loading them could run code); "
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


def _npz_raw(x: np.ndarray, y: np.ndarray, path: Path) -> RawData:
    if x.ndim < 2 or 0 in x.shape[1:]:
        raise InputError(
            f"{path}: array 'x' has shape {x.shape}; it must be (samples, features...) "
            "with at least one feature, e.g. x.reshape(len(x), -1)"
        )
    if y.ndim != 1:
        raise InputError(
            f"{path}: array 'y' has shape {y.shape}; it must be one class label per sample "
            "(for one-hot labels save y.argmax(1))"
        )
    if len(x) != len(y):
        raise InputError(
            f"{path}: array 'x' has {len(x)} samples but 'y' has {len(y)}; make them equal"
        )
    if len(x) == 0:
        raise InputError(
            f"{path}: arrays 'x' and 'y' are empty; save at least one sample per class"
        )
    with np.errstate(over="ignore"):  # values beyond float32 become inf and are reported below
        features = x.astype(np.float32)
    if not np.isfinite(features).all():
        index = first_bad(features)
        raise InputError(
            f"{path}: array 'x' at index {list(index)} is {x[index]}, not a finite float32; "
            "remove or impute non-finite values"
        )
    where = f"{path}, array 'y'"
    notes = check_classes(y, where)
    labels, names = encode_labels(_integer_labels(y, path), where)
    return RawData(features, labels, names, str(path), notes=notes)


def _integer_labels(y: np.ndarray, path: Path) -> np.ndarray:
    """Any integers are labels (negative too); floats only if they are whole numbers."""
    if y.dtype.kind == "b":
        return y.astype(np.int64)
    if y.dtype.kind != "f":
        return y
    bad = ~np.isfinite(y) | (y != np.round(y)) | (np.abs(y) > 2**53)  # 2**53: exact in float64
    if bad.any():
        i = int(np.argmax(bad))
        raise InputError(
            f"{path}: array 'y' at index {i} is {y[i]}, not an integer class label; use ints"
        )
    return y.astype(np.int64)
