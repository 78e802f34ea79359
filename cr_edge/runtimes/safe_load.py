"""Safe loading: every file is checked here before any runtime sees it.

A model file is untrusted input. Before onnxruntime or ExecuTorch open it, it must
exist, be a regular file, parse as what its suffix says (an ONNX protobuf, an ORT
flatbuffer with the ``ORTM`` identifier, an ExecuTorch program with ``ET``), and an
ONNX model's external data must stay inside the model's folder: no absolute path,
no ``..``, no symlink, no hardlink — the four defences ONNX added after its
path-traversal CVEs (CVE-2022-25882, CVE-2024-27318). Anything else is an
``InputError`` naming the file, and the tensor where there is one.

Companions are found by name next to the artifact: ``X.onnx`` has the derivative
companion ``X.jvp.onnx`` and the oracle ``X.ref.npz`` (falling back to
``model.ref.npz`` in the same folder).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import TYPE_CHECKING

from cr_edge.artifacts.manifest import verify
from cr_edge.errors import InputError

if TYPE_CHECKING:  # onnx is imported where an ONNX file is parsed: importing it is most of
    import onnx  # the start-up of a sandboxed child, and an .ort or .pte never needs it
    from onnx import TensorProto

KINDS = {".onnx": "onnx", ".ort": "ort", ".pte": "pte"}
ORT_IDENTIFIER = b"ORTM"  # flatbuffer file identifier of ORT-format models, bytes 4..8
PTE_IDENTIFIER = b"ET"  # ExecuTorch program identifier "ETxx", bytes 4..8
COMPANION_TAG = ".jvp"
ORACLE_SUFFIX = ".ref.npz"
DEFAULT_ORACLE = "model.ref.npz"


@dataclass(frozen=True)
class Artifact:
    """A model file that passed the checks; ``model`` is the parsed ONNX graph (no weights read)."""

    path: Path
    kind: str  # "onnx" | "ort" | "pte"
    data: bytes = field(repr=False)
    model: onnx.ModelProto | None = field(default=None, repr=False)


def check_artifact(path: Path) -> Artifact:
    """Check ``path`` and return it parsed; raise ``InputError`` naming the file otherwise."""
    path = Path(path)
    kind = KINDS.get(path.suffix.lower())
    if kind is None:
        raise InputError(f"{path}: unknown artifact type; expected one of {', '.join(KINDS)}")
    data = _read_regular_file(path)
    verify(path, data)
    if kind == "onnx":
        model = _parse_onnx(path, data)
        _check_external_data(path, model)
        return Artifact(path, kind, data, model)
    identifier = ORT_IDENTIFIER if kind == "ort" else PTE_IDENTIFIER
    if len(data) < 8 or not data[4:8].startswith(identifier):
        what = "an ORT-format model" if kind == "ort" else "an ExecuTorch program"
        raise InputError(
            f"{path}: not {what} (no {identifier.decode()!r} identifier at bytes 4..8); "
            "the file is truncated or of another type"
        )
    return Artifact(path, kind, data)


def companion_of(path: Path) -> Path:
    """``X.jvp.onnx`` for ``X.onnx`` (same suffix for ``.ort``)."""
    return path.with_name(f"{path.stem}{COMPANION_TAG}{path.suffix}")


def is_companion(path: Path) -> bool:
    return path.stem.endswith(COMPANION_TAG)


def sibling(path: Path, suffix: str) -> Path:
    """The same artifact in another format: ``model.int8.onnx`` -> ``model.int8.ort``."""
    return path.with_suffix(suffix)


def oracle_path(artifact: Path, ref: Path | None = None) -> Path:
    """``--ref`` if given, else ``X.ref.npz``, else ``model.ref.npz`` beside the artifact."""
    if ref is not None:
        return Path(ref)
    own = artifact.with_name(artifact.stem + ORACLE_SUFFIX)
    if own.exists():
        return own
    shared = artifact.with_name(DEFAULT_ORACLE)
    if shared.exists():
        return shared
    raise InputError(
        f"{artifact}: no parity oracle beside it (looked for {own.name} and {DEFAULT_ORACLE}); "
        "pass --ref PATH"
    )


def _read_regular_file(path: Path) -> bytes:
    try:
        st = path.stat()
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except OSError as e:
        raise InputError(f"{path}: cannot read it ({e.strerror})") from e
    if not stat.S_ISREG(st.st_mode):
        raise InputError(f"{path}: not a regular file")
    try:
        data = path.read_bytes()
    except OSError as e:
        raise InputError(f"{path}: cannot read it ({e.strerror})") from e
    if not data:
        raise InputError(f"{path}: empty file")
    return data


def _parse_onnx(path: Path, data: bytes) -> onnx.ModelProto:
    import onnx

    try:
        model = onnx.load_model_from_string(data)
    # protobuf's decoder reports garbage with several exception types (DecodeError,
    # RuntimeError, ValueError, depending on the backend); all of them mean "not ONNX".
    except Exception as e:
        raise InputError(f"{path}: not a valid ONNX model ({one_line(e)})") from e
    if not model.graph.output or not model.graph.input:
        raise InputError(
            f"{path}: not a usable ONNX model (the graph declares no inputs or no outputs); "
            "the file is truncated or of another type"
        )
    return model


def _check_external_data(path: Path, model: onnx.ModelProto) -> None:
    from onnx import TensorProto

    folder = path.parent.resolve()
    for tensor in _tensors(model.graph):
        if tensor.data_location != TensorProto.EXTERNAL:
            continue
        entries = {e.key: e.value for e in tensor.external_data}
        location = entries.get("location", "")
        problem = _location_problem(folder, location)
        if problem:
            raise InputError(
                f"{path}: tensor {tensor.name!r} has external data location {location!r} that "
                f"{problem}; external data must be a regular file inside {folder}"
            )


def _location_problem(folder: Path, location: str) -> str:
    if not location:
        return "is empty"
    if PurePosixPath(location).is_absolute() or PureWindowsPath(location).is_absolute():
        return "is absolute"
    parts = PureWindowsPath(location).parts  # splits on both / and \
    if ".." in parts or PureWindowsPath(location).drive:
        return "escapes the model folder"
    target = folder / location
    try:
        st = os.lstat(target)
    except OSError:
        return "does not exist"
    if stat.S_ISLNK(st.st_mode):
        return "is a symlink"
    if not stat.S_ISREG(st.st_mode):
        return "is not a regular file"
    if st.st_nlink > 1:
        return "is a hardlink"
    if os.path.commonpath([folder, target.resolve()]) != str(folder):
        return "escapes the model folder through a symlinked directory"
    return ""


def _tensors(graph: onnx.GraphProto) -> Iterator[TensorProto]:
    """Every tensor a graph can carry data in: initializers and attributes, subgraphs included."""
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
        yield sparse.indices
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("g"):
                yield from _tensors(attr.g)
            for sub in attr.graphs:
                yield from _tensors(sub)


def one_line(e: BaseException, limit: int = 160) -> str:
    """An exception as one short line: messages from onnx/onnxruntime can span pages."""
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."
