"""IDX files (the MNIST format), optionally gzip'ed."""

from __future__ import annotations

import gzip
import math
import struct
import zlib
from pathlib import Path
from typing import BinaryIO

import numpy as np

from cr_edge.data.records import RawData, encode_labels, require_file, show
from cr_edge.errors import InputError

_IDX_IMAGES = 0x00000803  # unsigned bytes, 3 dims: count, rows, cols
_IDX_LABELS = 0x00000801  # unsigned bytes, 1 dim: count
_CHUNK = 1 << 20


def load_idx(images: Path, labels: Path) -> RawData:
    """An MNIST-style pair: unsigned-byte images (n, rows, cols) and labels (n,); gzip allowed.

    Pixels are scaled from 0..255 to [0, 1] and given one channel: (n, 1, rows, cols).
    """
    images, labels = Path(images), Path(labels)
    pixels = _read_idx(images, _IDX_IMAGES, ("count", "rows", "cols"))
    targets = _read_idx(labels, _IDX_LABELS, ("count",))
    if len(targets) != len(pixels):
        raise InputError(
            f"{labels}: header field 'count' is {len(targets)} but {images} holds {len(pixels)} "
            "images; pair each images file with its own labels file"
        )
    y, names = encode_labels(targets, f"{labels}, labels")
    x = pixels.astype(np.float32)[:, None] / np.float32(255)
    return RawData(x, y, names, f"{images},{labels}")


def _read_idx(path: Path, magic: int, fields: tuple[str, ...]) -> np.ndarray:
    require_file(path)
    try:
        with _open_maybe_gzip(path) as f:
            dims = _idx_header(f, path, magic, fields)
            payload = _read_at_most(f, math.prod(dims) + 1)  # +1 reveals trailing bytes
    except (OSError, EOFError, zlib.error) as e:
        raise InputError(f"{path}: cannot read ({show(str(e), 60)}); the file is corrupt") from e
    expected = math.prod(dims)
    if len(payload) != expected:
        sizes = " * ".join(f"{name}={d}" for name, d in zip(fields, dims, strict=True))
        held = f"only {len(payload)}" if len(payload) < expected else "more"
        raise InputError(
            f"{path}: header fields {sizes} need {expected} payload bytes but the file holds "
            f"{held}; the file is truncated or the header fields are wrong"
        )
    return np.frombuffer(payload, dtype=np.uint8).reshape(dims)


def _open_maybe_gzip(path: Path) -> BinaryIO:
    """Sniff the gzip magic instead of trusting the ``.gz`` suffix, which renames lose."""
    with path.open("rb") as f:
        gzipped = f.read(2) == b"\x1f\x8b"
    return gzip.open(path, "rb") if gzipped else path.open("rb")  # type: ignore[return-value]


def _idx_header(f: BinaryIO, path: Path, magic: int, fields: tuple[str, ...]) -> tuple[int, ...]:
    head = f.read(4)
    if len(head) < 4:
        raise InputError(f"{path}: truncated in header field 'magic' ({len(head)} of 4 bytes)")
    (found,) = struct.unpack(">I", head)
    if found != magic:
        kind = "images" if magic == _IDX_IMAGES else "labels"
        raise InputError(
            f"{path}: header field 'magic' is {found:#010x}, expected {magic:#010x} "
            f"(unsigned-byte IDX {kind}); give the {kind} file"
        )
    raw = f.read(4 * len(fields))
    if len(raw) < 4 * len(fields):
        missing = fields[len(raw) // 4]
        raise InputError(f"{path}: truncated in header field {missing!r}; re-extract the file")
    dims = struct.unpack(f">{len(fields)}I", raw)
    for name, size in zip(fields, dims, strict=True):
        if size == 0:
            raise InputError(f"{path}: header field {name!r} is 0, so the file holds no data")
    return dims


def _read_at_most(f: BinaryIO, limit: int) -> bytes:
    """Read in chunks, so a header that lies about the size cannot make us allocate it."""
    chunks: list[bytes] = []
    left = limit
    while left > 0:
        chunk = f.read(min(left, _CHUNK))
        if not chunk:
            break
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)
