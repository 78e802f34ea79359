"""Starting a command on devices: which files it needs, its options, a thread per device.

Light on purpose (no onnx, no onnxruntime at import): ``validate --on`` starts the
devices before the host imports its own validator, so the device's Python start-up
and imports overlap the host's instead of following them. The host decides which
files a command needs (the artifact, its siblings in other formats, its derivative
companion, its oracle, its folder's manifest) and gives each source folder a number
on the device, so two artifacts called ``model.onnx`` stay apart; the command is sent
with paths relative to the run folder the device lays out.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

from cr_edge.devices import external, registry
from cr_edge.devices.registry import Device
from cr_edge.devices.remote import DeviceRun, progress_bar_factory, run_command
from cr_edge.errors import InputError
from cr_edge.runtimes.safe_load import COMPANION_TAG, DEFAULT_ORACLE, ORACLE_SUFFIX

_FORMATS = (".onnx", ".ort", ".pte")
MANIFEST = "manifest.json"


def parse_names(on: str | list[str] | tuple[str, ...] | None) -> list[Device]:
    """``"a,b"`` or ``["a", "b"]`` -> the registered devices, each named once."""
    if on is None:
        return []
    names = [n.strip() for part in ([on] if isinstance(on, str) else on) for n in part.split(",")]
    if not all(names):
        raise InputError(f"--on {on!r}: give device names separated by commas")
    devices = registry.load()
    chosen = []
    for name in dict.fromkeys(names):
        chosen.append(devices[name] if name in devices else registry.get(name))
    return chosen


def layout(artifacts: list[Path], kind: str, ref: Path | None = None) -> tuple[list, list[str]]:
    """(files, paths): (device rel path, host path) for every file ``kind`` needs, and the
    artifacts' device paths, in order. Each source folder becomes ``<k>/`` on the device."""
    folders: dict[Path, str] = {}
    files: dict[str, Path] = {}
    paths = []
    for artifact in map(Path, artifacts):
        folder = artifact.resolve().parent
        prefix = folders.setdefault(folder, str(len(folders)))
        for path in _needed(artifact, kind, ref is None):
            files.setdefault(f"{prefix}/{path.name}", path)
            for rel, data in external.data_layout(prefix, path):  # its weights, if kept apart
                files.setdefault(rel, data)
        paths.append(f"{prefix}/{artifact.name}")
    if ref is not None and kind == "validate":
        files[f"ref/{Path(ref).name}"] = Path(ref)
    return sorted(files.items()), paths


def _needed(artifact: Path, kind: str, oracle: bool) -> list[Path]:
    stem = artifact.with_suffix("")
    candidates = [artifact, artifact.parent / MANIFEST]
    candidates += [stem.with_suffix(s) for s in _FORMATS]
    if kind == "validate":
        candidates += [stem.with_name(stem.name + COMPANION_TAG + s) for s in _FORMATS]
        if oracle:
            candidates += [
                stem.with_name(stem.name + ORACLE_SUFFIX),
                artifact.parent / DEFAULT_ORACLE,
            ]
    else:
        candidates += [stem.with_suffix(".pte.json"), stem.with_suffix(".floor.pte")]
    return [p for p in dict.fromkeys(candidates) if p.is_file()]


class Pending:
    """Device runs started in threads; ``wait`` returns them in order or raises the first error."""

    def __init__(self, devices: list[Device], start: Callable[[Device], DeviceRun]) -> None:
        self.results: dict[str, DeviceRun | BaseException] = {}
        self.devices = devices
        self.threads = [
            threading.Thread(target=self._one, args=(d, start), daemon=True) for d in devices
        ]
        for t in self.threads:
            t.start()

    def _one(self, device: Device, start: Callable[[Device], DeviceRun]) -> None:
        try:
            self.results[device.name] = start(device)
        except BaseException as e:  # carried to the main thread, raised there
            self.results[device.name] = e

    def wait(self) -> list[DeviceRun]:
        for t in self.threads:
            t.join()
        runs = []
        for device in self.devices:
            result = self.results[device.name]
            if isinstance(result, BaseException):
                raise result
            runs.append(result)
        return runs


def start(devices: list[Device], command: str, files: list, argv: list[str]) -> Pending:
    """Begin ``cr-edge COMMAND ARGV`` on every device, each in its own thread."""
    progress = progress_bar_factory()
    return Pending(devices, lambda d: run_command(d, command, files, argv, progress))


def start_validation(
    devices: list[Device], artifacts: list[Path], argv: list[str], ref: Path | None
) -> Pending:
    """Begin ``validate`` of ``artifacts`` on every device (``argv``: its options)."""
    files, paths = layout(artifacts, "validate", ref)
    if ref is not None:
        argv = [*argv, "--ref", f"ref/{Path(ref).name}"]
    return start(devices, "validate", files, [*paths, *argv])


def validate_argv(
    runtimes: tuple[str, ...] | list[str] | str,
    derivatives: str,
    atol: float | None = None,
    rtol: float | None = None,
    deriv_rtol: float | None = None,
    min_cosine: float | None = None,
    accept_failed_export: bool = False,
) -> list[str]:
    """The options of a local ``validate`` call, as the device's command line takes them."""
    names = runtimes if isinstance(runtimes, str) else ",".join(runtimes)
    argv = ["--runtime", names, "--derivatives", derivatives]
    given = {"atol": atol, "rtol": rtol, "deriv-rtol": deriv_rtol, "min-cosine": min_cosine}
    for flag, value in given.items():
        if value is not None:
            argv += [f"--{flag}", repr(float(value))]
    return [*argv, "--accept-failed-export"] if accept_failed_export else argv


def profile_argv(
    runtimes: tuple[str, ...] | list[str] | str,
    batches: tuple[int, ...],
    threads: tuple[int, ...] | str | None,
    warmup: int,
    iters: int | None,
    seconds: float | None,
    per_op: bool,
    memory: bool,
    floor: bool,
) -> list[str]:
    """The options of a local ``profile`` call, as the device's command line takes them."""
    names = runtimes if isinstance(runtimes, str) else ",".join(runtimes)
    argv = ["--runtime", names, "--batch", ",".join(map(str, batches)), "--warmup", str(warmup)]
    if threads is not None:
        argv += ["--threads", threads if isinstance(threads, str) else ",".join(map(str, threads))]
    if iters is not None:
        argv += ["--iters", str(iters)]
    if seconds is not None:
        argv += ["--seconds", repr(float(seconds))]
    argv += ["--per-op"] if per_op else []
    argv += ["--memory" if memory else "--no-memory", "--floor" if floor else "--no-floor"]
    return argv
