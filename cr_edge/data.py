"""Training data: scikit-learn's bundled sets and user files (CSV, NPZ, IDX), splits, normalisation.

Every loader returns the same ``RawData`` (float32 samples, int64 class indices 0..k-1 and
the name of each class), so training never cares where the data came from. User files are
untrusted: any defect becomes one ``InputError`` line naming the file, the line/column or
header field, and what to do -- never a traceback. NPZ files are opened with
``allow_pickle=False`` so that reading data can never run code, and no header is trusted
with an allocation size before it has been checked against the bytes actually present.
"""

from __future__ import annotations

import csv
import gzip
import math
import struct
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import numpy as np

from cr_edge.errors import InputError

if TYPE_CHECKING:
    import _csv

# scikit-learn ships these inside the wheel: nothing is downloaded.
_SKLEARN_LOADERS = {
    "digits": "load_digits",
    "breast-cancer": "load_breast_cancer",
    "wine": "load_wine",
}
BUILTINS = tuple(_SKLEARN_LOADERS)  # ("digits", "breast-cancer", "wine")
PER_MODES = ("feature", "channel")

_IDX_IMAGES = 0x00000803  # unsigned bytes, 3 dims: count, rows, cols
_IDX_LABELS = 0x00000801  # unsigned bytes, 1 dim: count
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


@dataclass(frozen=True, eq=False)  # eq=False: comparing arrays field by field has no truth value
class RawData:
    """One labelled dataset as loaded, before any split."""

    x: np.ndarray  # float32, shape (n, *input_shape); images are (n, channels, h, w)
    y: np.ndarray  # int64 class indices 0..k-1
    label_names: list[str]  # label_names[i] is the original label of class index i
    source: str  # a built-in name or the file path(s), for reports and the checkpoint


@dataclass(frozen=True, eq=False)
class Dataset:
    """Train/val/test splits of one ``RawData``: val steers training, test is reported once."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    label_names: list[str]
    input_shape: tuple[int, ...]
    source: str

    @property
    def n_classes(self) -> int:
        return len(self.label_names)


# --- shared helpers ------------------------------------------------------------------------


def _show(value: object, limit: int = 40) -> str:
    """repr() cut short, so a 100 kB cell cannot turn an error into a wall of text."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _require_file(path: Path) -> None:
    if not path.exists():
        raise InputError(f"{path}: file not found; check the path")
    if not path.is_file():
        raise InputError(f"{path}: not a regular file; give the path of a data file")


def _encode_labels(labels: np.ndarray, where: str) -> tuple[np.ndarray, list[str]]:
    """Map any label values to 0..k-1 in sorted order, keeping the originals as names."""
    classes, y = np.unique(labels, return_inverse=True)
    _require_two_classes([str(c) for c in classes], where)
    return y.astype(np.int64).reshape(-1), [str(c) for c in classes]


def _require_two_classes(names: list[str], where: str) -> None:
    if len(names) < 2:
        raise InputError(
            f"{where}: every sample has the label {_show(names[0])}; "
            "a classifier needs at least two classes"
        )


def _first_bad(values: np.ndarray) -> tuple[int, ...]:
    return tuple(int(i) for i in np.argwhere(~np.isfinite(values))[0])


# --- built-in datasets ---------------------------------------------------------------------


def load_builtin(name: str) -> RawData:
    """A small dataset bundled with scikit-learn, ready to train on without any file."""
    if name not in _SKLEARN_LOADERS:
        raise InputError(
            f"unknown built-in dataset {_show(name)}; use one of {', '.join(BUILTINS)} "
            "or the path of a .csv, .npz or IDX file"
        )
    from sklearn import datasets  # scikit-learn belongs to the train extra, not the core install

    bunch = getattr(datasets, _SKLEARN_LOADERS[name])()
    if name == "digits":
        # 4-bit pixels (0..16) as one-channel 8x8 images, scaled to [0, 1] like IDX images.
        x = bunch.images.astype(np.float32)[:, None] / np.float32(16)
    else:
        x = bunch.data.astype(np.float32)
    names = [str(n) for n in bunch.target_names]
    return RawData(x, bunch.target.astype(np.int64), names, name)


# --- CSV -----------------------------------------------------------------------------------


def load_csv(path: Path, target: str) -> RawData:
    """A CSV with a header row; the ``target`` column holds labels, every other one a number.

    Parsed row by row with the ``csv`` module so that every error can name its line.
    """
    path = Path(path)
    _require_file(path)
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:  # -sig: Excel writes a BOM
            reader = csv.reader(f, strict=True)  # unbalanced quotes: an error, not a guess
            try:
                return _parse_csv(reader, path, target)
            except csv.Error as e:
                raise InputError(
                    f"{path}:{reader.line_num}: malformed CSV ({e}); fix the quoting"
                ) from e
    except UnicodeDecodeError as e:
        raise InputError(
            f"{path}: not UTF-8 text (bad byte {e.object[e.start]:#04x}); save as UTF-8"
        ) from e
    except OSError as e:
        raise InputError(f"{path}: cannot read ({e.strerror}); check the permissions") from e


def _parse_csv(reader: _csv.Reader, path: Path, target: str) -> RawData:
    header = _csv_header(reader, path, target)
    t = header.index(target)
    columns = [j for j in range(len(header)) if j != t]
    names = [header[j] for j in columns]
    rows: list[np.ndarray] = []
    labels: list[str] = []
    for row in reader:
        if not row:  # a blank line
            continue
        where = f"{path}:{reader.line_num}"
        if len(row) != len(header):
            raise InputError(
                f"{where}: {len(row)} fields but the header has {len(header)}; "
                "make every row as long as the header"
            )
        labels.append(_csv_label(row[t], where, target))
        rows.append(_csv_features([row[j] for j in columns], where, names))
    if not rows:
        raise InputError(f"{path}: no data rows after the header; add samples, one per line")
    y, label_names = _csv_encode(labels, f"{path}, column {_show(target)}")
    return RawData(np.stack(rows), y, label_names, str(path))


def _csv_header(reader: _csv.Reader, path: Path, target: str) -> list[str]:
    header = [name.strip() for name in next(reader, [])]
    if not header:
        raise InputError(
            f"{path}:1: empty file or blank first line; the first line must be a header"
        )
    if all(_is_number(name) for name in header):
        raise InputError(
            f"{path}:1: the first line is all numbers, not a header; "
            "add a header row naming the columns"
        )
    duplicates = sorted({name for name in header if header.count(name) > 1})
    if duplicates:
        raise InputError(
            f"{path}:1: duplicate column {_show(duplicates[0])}; give each column its own name"
        )
    if target not in header:
        shown = ", ".join(_show(n, 30) for n in header[:20]) + (", ..." if len(header) > 20 else "")
        raise InputError(f"{path}:1: no target column {_show(target)}; the columns are {shown}")
    if len(header) < 2:
        raise InputError(f"{path}:1: only the target column; add at least one feature column")
    return header


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _csv_label(cell: str, where: str, target: str) -> str:
    label = cell.strip()
    if not label:
        raise InputError(
            f"{where}, column {_show(target)}: empty label; fill it in or drop the row"
        )
    return label


def _csv_features(cells: list[str], where: str, names: list[str]) -> np.ndarray:
    """One row as float32; the slow cell-by-cell pass runs only to name a cell numpy refused."""
    with np.errstate(over="ignore"):  # too large for float32 -> inf, reported below
        try:
            values = np.array(cells, dtype=np.float32)
        except ValueError:
            values = np.array(
                [_csv_number(c, where, n) for c, n in zip(cells, names, strict=True)], np.float32
            )
    if not np.isfinite(values).all():
        (j,) = _first_bad(values)
        raise InputError(
            f"{where}, column {_show(names[j])}: {_show(cells[j])} is not a finite float32 number; "
            "replace it with a real value or drop the row"
        )
    return values


def _csv_number(cell: str, where: str, name: str) -> float:
    try:
        return float(cell)
    except ValueError:
        what = "empty cell" if not cell.strip() else f"{_show(cell)} is not a number"
        raise InputError(f"{where}, column {_show(name)}: {what}; fix or drop the row") from None


def _csv_encode(labels: list[str], where: str) -> tuple[np.ndarray, list[str]]:
    names = _sorted_labels(set(labels))
    _require_two_classes(names, where)
    index = {name: i for i, name in enumerate(names)}
    return np.array([index[label] for label in labels], dtype=np.int64), names


def _sorted_labels(labels: set[str]) -> list[str]:
    """Numeric labels sort as numbers ("2" before "10"), so class indices follow their values."""
    try:
        return sorted(labels, key=_numeric_key)
    except ValueError:
        return sorted(labels)


def _numeric_key(label: str) -> tuple[float, str]:
    value = float(label)
    if not math.isfinite(value):  # NaN has no order; sorting on it would depend on set order
        raise ValueError(label)
    return value, label


# --- NPZ -----------------------------------------------------------------------------------


def load_npz(path: Path) -> RawData:
    """An ``.npz`` archive with a float array ``x`` (n, ...) and an integer array ``y`` (n,)."""
    path = Path(path)
    _require_file(path)
    with path.open("rb") as f:
        if f.read(6) == b"\x93NUMPY":  # np.load would allocate whatever shape its header claims
            raise InputError(f"{path}: a single .npy array, not an .npz archive; {_NPZ_HINT}")
    try:
        archive = np.load(path, allow_pickle=False)
    except _ZIP_ERRORS as e:
        raise InputError(
            f"{path}: not a readable .npz archive ({_show(str(e), 60)}); {_NPZ_HINT}"
        ) from e
    with archive:
        x = _npz_array(archive, "x", path)
        y = _npz_array(archive, "y", path)
    return _npz_raw(x, y, path)


def _npz_array(archive: np.lib.npyio.NpzFile, name: str, path: Path) -> np.ndarray:
    if name not in archive.files:
        raise InputError(
            f"{path}: no array {name!r} (found {_show(archive.files, 60)}); {_NPZ_HINT}"
        )
    member = name + ".npy" if name + ".npy" in archive.zip.namelist() else name
    try:
        _check_npy_entry(archive.zip, member, path, name)
        return archive[name]
    except _ZIP_ERRORS as e:
        raise InputError(
            f"{path}: array {name!r} is unreadable ({_show(str(e), 60)}); the file is corrupt"
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
        index = _first_bad(features)
        raise InputError(
            f"{path}: array 'x' at index {list(index)} is {x[index]}, not a finite float32; "
            "remove or impute non-finite values"
        )
    labels, names = _encode_labels(_integer_labels(y, path), f"{path}, array 'y'")
    return RawData(features, labels, names, str(path))


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


# --- IDX (MNIST format) ----------------------------------------------------------------------


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
    y, names = _encode_labels(targets, f"{labels}, labels")
    x = pixels.astype(np.float32)[:, None] / np.float32(255)
    return RawData(x, y, names, f"{images},{labels}")


def _read_idx(path: Path, magic: int, fields: tuple[str, ...]) -> np.ndarray:
    _require_file(path)
    try:
        with _open_maybe_gzip(path) as f:
            dims = _idx_header(f, path, magic, fields)
            payload = _read_at_most(f, math.prod(dims) + 1)  # +1 reveals trailing bytes
    except (OSError, EOFError, zlib.error) as e:
        raise InputError(f"{path}: cannot read ({_show(str(e), 60)}); the file is corrupt") from e
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


# --- choosing a loader -----------------------------------------------------------------------


def load_source(source: str, target: str | None = None) -> RawData:
    """Load what a user named on the command line or in a recipe.

    ``source`` is read as the first of these that fits:

    * a built-in name: ``digits``, ``breast-cancer`` or ``wine`` (write ``./digits`` to mean
      a file of that name);
    * a path ending in ``.csv``: needs ``target``, the name of the label column;
    * a path ending in ``.npz``: arrays ``x`` and ``y``;
    * ``IMAGES,LABELS``: an IDX pair, either file optionally gzip'ed, e.g.
      ``train-images-idx3-ubyte.gz,train-labels-idx1-ubyte.gz`` (a comma, not a colon,
      because colons are part of Windows paths);
    * a single IDX images file (its name contains ``idx``): the labels file beside it is
      found by the MNIST naming convention, ``images`` -> ``labels`` and ``idx3`` -> ``idx1``.

    ``target`` is refused for anything but CSV rather than silently ignored.
    """
    path = Path(source)
    if source not in BUILTINS and path.suffix.lower() == ".csv":
        if not target:
            raise InputError(f"{path}: a CSV source needs a target, the name of its label column")
        return load_csv(path, target)
    if target:
        raise InputError(f"{source}: field 'target' applies only to CSV sources; remove it")
    if source in BUILTINS:
        return load_builtin(source)
    if path.suffix.lower() == ".npz":
        return load_npz(path)
    if "," in source:
        images, _, labels = source.partition(",")
        return load_idx(Path(images.strip()), Path(labels.strip()))
    if "idx" in path.name.lower():
        return load_idx(path, _labels_beside(path))
    raise InputError(
        f"{_show(source)}: not a built-in dataset ({', '.join(BUILTINS)}) nor a .csv, .npz or "
        "IDX file; check the spelling"
    )


def _labels_beside(images: Path) -> Path:
    name = images.name.replace("images", "labels").replace("idx3", "idx1")
    if name == images.name:
        raise InputError(
            f"{images}: cannot guess the labels file from this name; give both as IMAGES,LABELS"
        )
    return images.with_name(name)


# --- normalisation -------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Normalisation:
    """Input standardisation, fitted on the training split only (fitting on all data leaks
    val/test statistics). Stored as JSON in checkpoints and ONNX metadata so that every
    runtime applies exactly the same transform.
    """

    mean: np.ndarray  # float32: the sample shape for per="feature", (channels,) for "channel"
    std: np.ndarray  # float32, same shape, > 0
    per: str  # "feature" or "channel"

    def __post_init__(self) -> None:
        if self.per not in PER_MODES:
            raise InputError(
                f"normalisation field 'per' is {_show(self.per)}; use one of {PER_MODES}"
            )
        mean = np.asarray(self.mean, dtype=np.float32)
        std = np.asarray(self.std, dtype=np.float32)
        if mean.shape != std.shape or mean.ndim == 0 or (self.per == "channel" and mean.ndim != 1):
            raise InputError(
                f"normalisation fields 'mean' {mean.shape} and 'std' {std.shape} do not fit "
                f"per={self.per!r}; refit the normalisation"
            )
        if not (np.isfinite(mean).all() and np.isfinite(std).all() and (std > 0).all()):
            raise InputError(
                "normalisation fields 'mean'/'std' must be finite with std > 0; "
                "refit on finite training data"
            )
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "std", std)

    def apply(self, x: np.ndarray) -> np.ndarray:
        """(x - mean) / std as float32, for a batch shaped (n, *sample_shape)."""
        x = np.asarray(x, dtype=np.float32)
        mean, std = self._broadcastable(x.shape)
        return ((x - mean) / std).astype(np.float32, copy=False)

    def _broadcastable(self, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
        if self.per == "channel":
            if len(shape) != 4 or shape[1] != len(self.mean):
                raise InputError(
                    f"inputs of shape {shape} do not fit a {len(self.mean)}-channel normalisation; "
                    "give images shaped (n, channels, h, w)"
                )
            return self.mean[:, None, None], self.std[:, None, None]
        if tuple(shape[1:]) != self.mean.shape:
            raise InputError(
                f"inputs of shape {shape} do not fit a normalisation fitted on samples of shape "
                f"{self.mean.shape}; give inputs shaped like the training data"
            )
        return self.mean, self.std

    def to_json(self) -> dict:
        return {"per": self.per, "mean": self.mean.tolist(), "std": self.std.tolist()}

    @classmethod
    def from_json(cls, d: dict) -> Normalisation:
        if not isinstance(d, dict):
            raise InputError(f"normalisation must be a JSON object, got {type(d).__name__}")
        missing = [key for key in ("per", "mean", "std") if key not in d]
        if missing:
            raise InputError(
                f"normalisation is missing field {missing[0]!r}; refit and save it again"
            )
        try:
            mean = np.asarray(d["mean"], dtype=np.float32)
            std = np.asarray(d["std"], dtype=np.float32)
        except (TypeError, ValueError) as e:
            raise InputError(
                f"normalisation fields 'mean'/'std' are not number arrays ({e})"
            ) from e
        return cls(mean=mean, std=std, per=d["per"])


def fit_normalisation(x_train: np.ndarray, per: str) -> Normalisation:
    """Mean/std per element of the sample shape (``"feature"``) or per image channel
    (``"channel"``, which keeps a conv net's inputs comparable across pixel positions).
    """
    if per not in PER_MODES:
        raise InputError(f"normalisation field 'per' is {_show(per)}; use one of {PER_MODES}")
    x = np.asarray(x_train, dtype=np.float32)
    if len(x) == 0 or x.ndim < 2:
        raise InputError(f"cannot fit a normalisation on inputs of shape {x.shape}; give samples")
    if per == "channel" and x.ndim != 4:
        raise InputError(
            f"normalisation per='channel' needs images shaped (n, channels, h, w), got {x.shape}; "
            "use per='feature'"
        )
    axes = (0, 2, 3) if per == "channel" else 0
    mean = x.mean(axis=axes, dtype=np.float64)  # float64 sums: float32 drifts on large sets
    std = x.std(axis=axes, dtype=np.float64)
    # A constant feature has std 0 and carries no information: dividing by 1 maps it to 0
    # instead of NaN/Inf. The relative bound also catches the rounding residue of a constant.
    std = np.where(std > 1e-6 * np.abs(mean), std, 1.0)
    return Normalisation(mean.astype(np.float32), std.astype(np.float32), per)


# --- splitting -----------------------------------------------------------------------------


def split(
    raw: RawData, seed: int, val_fraction: float = 0.15, test_fraction: float = 0.15
) -> Dataset:
    """Deterministic in ``seed`` and stratified, so that small sets keep every class in each
    split in its proportion. A class too small to stratify falls back to a plain shuffle.
    """
    _check_split_args(seed, val_fraction, test_fraction)
    n = len(raw.y)
    n_test, n_val = math.ceil(n * test_fraction), math.ceil(n * val_fraction)
    if n - n_test - n_val < 1:
        raise InputError(
            f"{raw.source}: {n} samples leave none for training after {n_val} val and {n_test} "
            "test; add samples or lower val_fraction/test_fraction"
        )
    rest, test = _hold_out(np.arange(n), raw.y, n_test, seed)
    train, val = _hold_out(rest, raw.y[rest], n_val, seed)
    return Dataset(
        x_train=raw.x[train],
        y_train=raw.y[train],
        x_val=raw.x[val],
        y_val=raw.y[val],
        x_test=raw.x[test],
        y_test=raw.y[test],
        label_names=list(raw.label_names),
        input_shape=tuple(int(d) for d in raw.x.shape[1:]),
        source=raw.source,
    )


def _check_split_args(seed: int, val_fraction: float, test_fraction: float) -> None:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2**32:
        raise InputError(f"split field 'seed' is {_show(seed)}; use an integer in [0, 2**32)")
    for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0 <= value < 1:  # also false for NaN
            raise InputError(f"split field {name!r} is {_show(value)}; use a value in [0, 1)")
    if val_fraction + test_fraction >= 1:
        raise InputError(
            f"split fields val_fraction + test_fraction = {val_fraction + test_fraction}; "
            "keep their sum below 1 so that some data is left for training"
        )


def _hold_out(
    index: np.ndarray, y: np.ndarray, n_out: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Split ``n_out`` of ``index`` off; 0 < n_out < len(index) is the caller's promise."""
    if n_out == 0:
        return index, index[:0]
    from sklearn.model_selection import train_test_split

    try:
        keep, out = train_test_split(index, test_size=n_out, random_state=seed, stratify=y)
    except ValueError:
        # sklearn refuses to stratify a class with one sample, or fewer held-out samples than
        # classes; a plain shuffle still gives a usable (if less balanced) split.
        keep, out = train_test_split(index, test_size=n_out, random_state=seed)
    return keep, out
