"""ONNX external data on a device: which files a model needs beside itself, and where.

A model saved with ``onnx.save(..., save_as_external_data=True)`` keeps its tensors in
one or more files next to it, named in the graph by a relative ``location``. The
device needs them, content-addressed like the model, and laid out as the host has
them. They cannot be symlinks to ``blobs/`` as other files are: the loader refuses
external data that is a symlink or a hardlink (``runtimes.safe_load``: a tensor must
not read a file outside its model's folder). So a source folder with external data
becomes a *bundle* on the device, ``bundles/<id>/``, holding its files as regular
files under their own names, ``<id>`` the sha256 of their names and contents: a
second run finds the bundle complete and pushes nothing, another version of the
model is another bundle. The run's folder for it is a symlink to the bundle.

Light at import (``launch`` imports it before the host's own validator): ``onnx`` is
imported only for a file whose bytes name an external ``location`` at all.
"""

from __future__ import annotations

import hashlib
import mmap
from pathlib import Path

from cr_edge.errors import InputError

_LOCATION_KEY = b"\x0a\x08location"  # StringStringEntryProto: field 1, 8 bytes, "location"


def _may_have_external_data(path: Path) -> bool:
    """Whether ``path``'s bytes hold an external-data ``location`` key at all (fast)."""
    if path.suffix != ".onnx":
        return False
    with open(path, "rb") as f:
        try:
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
                return data.find(_LOCATION_KEY) >= 0
        except ValueError:  # an empty file
            return False


def data_files(model: Path) -> list[Path]:
    """The external data files ``model`` reads, checked to lie inside its folder; [] if none.

    One line naming the model, the tensor and the fix when a location is absolute,
    escapes the folder, or names a file that is not there."""
    if not _may_have_external_data(model):
        return []
    import onnx

    from cr_edge.runtimes.safe_load import _location_problem, _tensors

    try:
        proto = onnx.load(str(model), load_external_data=False)
    except Exception as e:  # protobuf reports garbage with several types; the loader says more
        raise InputError(f"{model}: not a valid ONNX model ({e})") from e
    folder = model.resolve().parent
    found: dict[str, Path] = {}
    for tensor in _tensors(proto.graph):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        location = {e.key: e.value for e in tensor.external_data}.get("location", "")
        problem = _location_problem(folder, location)
        if problem:
            raise InputError(
                f"{model}: tensor {tensor.name!r} has external data {location!r} that {problem}; "
                f"keep the data files next to the model (onnx.save(..., location='NAME')), "
                "or save it without external data"
            )
        found.setdefault(location.replace("\\", "/"), folder / location)
    return [found[k] for k in sorted(found)]


def data_layout(prefix: str, model: Path) -> list[tuple[str, Path]]:
    """(device rel path, host path) of ``model``'s external data, under its folder's prefix."""
    folder = model.resolve().parent
    return [(f"{prefix}/{d.relative_to(folder).as_posix()}", d) for d in data_files(model)]


def bundles(files: list[tuple[str, Path]]) -> dict[str, str]:
    """``prefix -> bundle id`` for each source folder in ``files`` whose models have
    external data; the id hashes every file name and sha256 of that folder's files.

    ``files``: (device rel path ``<prefix>/<name>``, host path), as ``launch.layout``
    gives them."""
    prefixes = {
        rel.split("/", 1)[0]
        for rel, path in files
        if "/" in rel and _may_have_external_data(Path(path)) and data_files(Path(path))
    }
    entries: dict[str, list[str]] = {p: [] for p in prefixes}
    for rel, path in sorted(files):
        prefix, _, name = rel.partition("/")
        if prefix in entries:
            entries[prefix].append(f"{name}\0{_sha256(Path(path))}")
    return {p: hashlib.sha256("\n".join(v).encode()).hexdigest() for p, v in entries.items()}


def _sha256(path: Path) -> str:
    from cr_edge.devices.transport import file_digest

    return file_digest(path)[0]
