"""Refuse an export the declared target runtime cannot load, before anything is written.

A model stamped with an opset or IR version newer than the runtime on the phone
fails there at load time, far from the export that caused it. ``--target-runtime
onnxruntime==X`` (or ``ort-mobile==X``, whose releases follow onnxruntime's)
checks both numbers against onnxruntime's compatibility table; the error names the
model's version, the first release that supports it and what the target supports.
``executorch`` programs carry no opset: the guard requires the .pte target and, for
``executorch==X``, the installed ExecuTorch that writes it, since a program is read
by the runtime release that matches its writer.
"""

from __future__ import annotations

import importlib.metadata
from dataclasses import dataclass

import onnx

from cr_edge.errors import InputError

# onnxruntime release -> (max ONNX opset, max IR version), from the "ONNX opset support"
# table at onnxruntime.ai/docs/reference/compatibility.html. Releases newer than the last
# row are held to that row: a floor, never a guess above what is documented.
ORT_SUPPORT: dict[tuple[int, int], tuple[int, int]] = {
    (1, 10): (15, 8),
    (1, 11): (16, 8),
    (1, 12): (17, 8),
    (1, 13): (17, 8),
    (1, 14): (18, 8),
    (1, 15): (19, 9),
    (1, 16): (19, 9),
    (1, 17): (20, 9),
    (1, 18): (21, 10),
    (1, 19): (21, 10),
    (1, 20): (21, 10),
    (1, 21): (22, 10),
}
ONNX_RUNTIMES = ("onnxruntime", "ort-mobile")
RUNTIMES = (*ONNX_RUNTIMES, "executorch")


@dataclass(frozen=True)
class TargetRuntime:
    """``onnxruntime==1.17`` parsed: the runtime's name and its (major, minor) release."""

    spec: str
    runtime: str
    version: tuple[int, int] | None


def parse_target(spec: str) -> TargetRuntime:
    """``NAME`` or ``NAME==MAJOR.MINOR[.PATCH]``; ``InputError`` for anything else."""
    name, _, version = spec.strip().partition("==")
    if name not in RUNTIMES:
        raise InputError(f"--target-runtime {spec!r}: choose from {', '.join(RUNTIMES)}")
    if not version:
        if name in ONNX_RUNTIMES:
            raise InputError(f"--target-runtime {spec!r}: give the release, e.g. {name}==1.17")
        return TargetRuntime(spec, name, None)
    try:
        major, minor = (int(v) for v in version.split(".")[:2])
    except ValueError as e:
        raise InputError(f"--target-runtime {spec!r}: the release must look like 1.17") from e
    return TargetRuntime(spec, name, (major, minor))


def check_model(model: onnx.ModelProto, spec: str | None, targets: tuple[str, ...]) -> None:
    """``InputError`` if ``model`` (or the ``targets`` asked for) cannot run on ``spec``."""
    if spec is None:
        return
    target = parse_target(spec)
    if target.runtime == "executorch":
        _check_executorch(target, targets)
        return
    opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)
    max_opset, max_ir = supported(target)
    if opset > max_opset:
        raise InputError(
            f"opset {opset} needs onnxruntime >= {_first_release(opset, 0)}; target "
            f"{target.spec} supports opset <= {max_opset}; use --opset {max_opset}"
        )
    if model.ir_version > max_ir:
        raise InputError(
            f"IR version {model.ir_version} needs onnxruntime >= "
            f"{_first_release(0, model.ir_version)}; target {target.spec} supports IR <= {max_ir}; "
            "target a newer onnxruntime"
        )


def supported(target: TargetRuntime) -> tuple[int, int]:
    """(max opset, max IR version) of an onnxruntime release, from ``ORT_SUPPORT``."""
    assert target.version is not None  # parse_target requires it for ONNX runtimes
    oldest, newest = min(ORT_SUPPORT), max(ORT_SUPPORT)
    if target.version < oldest:
        raise InputError(
            f"--target-runtime {target.spec}: releases before onnxruntime "
            f"{oldest[0]}.{oldest[1]} are not supported by cr-edge"
        )
    return ORT_SUPPORT[min(target.version, newest)]


def _first_release(opset: int, ir: int) -> str:
    for release, (max_opset, max_ir) in sorted(ORT_SUPPORT.items()):
        if max_opset >= opset and max_ir >= ir:
            return f"{release[0]}.{release[1]}"
    return "a release newer than cr-edge knows"


def _check_executorch(target: TargetRuntime, targets: tuple[str, ...]) -> None:
    if "executorch" not in targets:
        raise InputError(
            f"--target-runtime {target.spec}: add --target executorch to write the .pte it runs"
        )
    if target.version is None:
        return
    try:
        installed = importlib.metadata.version("executorch")
    except importlib.metadata.PackageNotFoundError as e:
        raise InputError(f"--target-runtime {target.spec}: executorch is not installed") from e
    have = tuple(int(v) for v in installed.split(".")[:2])
    if have != target.version:
        raise InputError(
            f"--target-runtime {target.spec}: the installed executorch {installed} writes "
            f"programs for executorch {have[0]}.{have[1]}; install executorch=={target.spec.split('==')[1]}"
        )
