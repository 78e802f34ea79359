"""Refuse an export the oldest runtime it must run on cannot load, before anything is written.

A model stamped with an opset or IR version newer than the runtime on the phone
fails there at load time, far from the export that caused it. The runtimes are named
as ``--runtime`` names them: ``--runtime-version cpu==X`` (onnxruntime's CPU provider)
or ``ort-mobile==X`` (whose releases follow onnxruntime's) checks both numbers against
onnxruntime's compatibility table; the error names the model's version, the first
release that supports it and what the named release supports. ``executorch-xnnpack``
programs carry no opset: the guard requires the .pte format and, for
``executorch-xnnpack==X``, the installed ExecuTorch that writes it, since a program is
read by the runtime release that matches its writer. The library names used before
(``onnxruntime``, ``executorch``) still read.
"""

from __future__ import annotations

import importlib.metadata
from dataclasses import dataclass

import onnx

from cr_edge.errors import InputError

# onnxruntime release -> (max ONNX opset, max IR version), each row as published in the
# "ONNX opset support" table of ONNX Runtime's compatibility page (COMPATIBILITY), whose
# source is docs/reference/compatibility.md on onnxruntime's gh-pages branch. Each row
# cites the page revision it was read from (ROW_SOURCES). Checked row by row against
# it: 1.15 is IR 8 there (the earlier table said 9), and the 1.21 row (opset 22) was
# dropped, since no published revision available here lists 1.21. Releases newer
# than the last row are held to that row: a floor, never a guess above what is
# documented; cr-edge exports opset <= 21 in any case.
COMPATIBILITY = "https://onnxruntime.ai/docs/reference/compatibility.html#onnx-opset-support"
_PAGE_1_16 = f"{COMPATIBILITY} (gh-pages d0ea319e, table up to 1.16)"
_PAGE_1_20 = f"{COMPATIBILITY} (gh-pages 109c0baa, table up to 1.20)"
ORT_SUPPORT: dict[tuple[int, int], tuple[int, int]] = {
    (1, 10): (15, 8),  # ONNX 1.10
    (1, 11): (16, 8),  # ONNX 1.11
    (1, 12): (17, 8),  # ONNX 1.12
    (1, 13): (17, 8),  # ONNX 1.12
    (1, 14): (18, 8),  # ONNX 1.13
    (1, 15): (19, 8),  # ONNX 1.14
    (1, 16): (19, 9),  # ONNX 1.14.1
    (1, 17): (20, 9),  # ONNX 1.15
    (1, 18): (21, 10),  # ONNX 1.16
    (1, 19): (21, 10),  # ONNX 1.16.1
    (1, 20): (21, 10),  # ONNX 1.16.1
}
ROW_SOURCES: dict[tuple[int, int], str] = {
    **{(1, minor): _PAGE_1_16 for minor in range(10, 17)},
    **{(1, minor): _PAGE_1_20 for minor in range(17, 21)},
}
ONNX_RUNTIMES = ("cpu", "ort-mobile")
RUNTIMES = (*ONNX_RUNTIMES, "executorch-xnnpack")  # as the runtime registry names them
_OLD_NAMES = {"onnxruntime": "cpu", "executorch": "executorch-xnnpack"}
FORMATS = ("onnx", "ort", "executorch")  # what an export writes; the guard checks the .pte one


@dataclass(frozen=True)
class RuntimeVersion:
    """``onnxruntime==1.17`` parsed: the runtime's name and its (major, minor) release."""

    spec: str
    runtime: str
    version: tuple[int, int] | None


def parse_runtime_version(spec: str) -> RuntimeVersion:
    """``NAME`` or ``NAME==MAJOR.MINOR[.PATCH]``; ``InputError`` for anything else."""
    name, _, version = spec.strip().partition("==")
    name = _OLD_NAMES.get(name, name)
    if name not in RUNTIMES:
        raise InputError(f"--runtime-version {spec!r}: choose from {', '.join(RUNTIMES)}")
    if not version:
        if name in ONNX_RUNTIMES:
            raise InputError(f"--runtime-version {spec!r}: give the release, e.g. {name}==1.17")
        return RuntimeVersion(spec, name, None)
    try:
        major, minor = (int(v) for v in version.split(".")[:2])
    except ValueError as e:
        raise InputError(f"--runtime-version {spec!r}: the release must look like 1.17") from e
    return RuntimeVersion(spec, name, (major, minor))


def check_model(model: onnx.ModelProto, spec: str | None, formats: tuple[str, ...]) -> None:
    """``InputError`` if ``model`` (or the ``formats`` asked for) cannot run on ``spec``."""
    if spec is None:
        return
    wanted = parse_runtime_version(spec)
    if wanted.runtime == "executorch-xnnpack":
        _check_executorch(wanted, formats)
        return
    opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)
    max_opset, max_ir = supported(wanted)
    if opset > max_opset:
        raise InputError(
            f"opset {opset} needs onnxruntime >= {_first_release(opset, 0)}; "
            f"{wanted.spec} supports opset <= {max_opset}; use --opset {max_opset}"
        )
    if model.ir_version > max_ir:
        raise InputError(
            f"IR version {model.ir_version} needs onnxruntime >= "
            f"{_first_release(0, model.ir_version)}; {wanted.spec} supports IR <= {max_ir}; "
            "pass a newer onnxruntime"
        )


def supported(wanted: RuntimeVersion) -> tuple[int, int]:
    """(max opset, max IR version) of an onnxruntime release, from ``ORT_SUPPORT``."""
    assert wanted.version is not None  # parse_runtime_version requires it for ONNX runtimes
    oldest, newest = min(ORT_SUPPORT), max(ORT_SUPPORT)
    if wanted.version < oldest:
        raise InputError(
            f"--runtime-version {wanted.spec}: releases before onnxruntime "
            f"{oldest[0]}.{oldest[1]} are not supported by cr-edge"
        )
    return ORT_SUPPORT[min(wanted.version, newest)]


def _first_release(opset: int, ir: int) -> str:
    for release, (max_opset, max_ir) in sorted(ORT_SUPPORT.items()):
        if max_opset >= opset and max_ir >= ir:
            return f"{release[0]}.{release[1]}"
    return "a release newer than cr-edge knows"


def _check_executorch(wanted: RuntimeVersion, formats: tuple[str, ...]) -> None:
    if "executorch" not in formats:
        raise InputError(
            f"--runtime-version {wanted.spec}: add --format executorch to write the .pte it runs"
        )
    if wanted.version is None:
        return
    try:
        installed = importlib.metadata.version("executorch")
    except importlib.metadata.PackageNotFoundError as e:
        raise InputError(f"--runtime-version {wanted.spec}: executorch is not installed") from e
    have = tuple(int(v) for v in installed.split(".")[:2])
    if have != wanted.version:
        raise InputError(
            f"--runtime-version {wanted.spec}: the installed executorch {installed} writes "
            f"programs for executorch {have[0]}.{have[1]}; install executorch=={wanted.spec.split('==')[1]}"
        )
