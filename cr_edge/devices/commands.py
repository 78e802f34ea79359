"""``validate --on`` and ``profile --on``: the local command, then the same on each device.

The host decides which files a command needs (the artifact, its siblings in other
formats, its derivative companion, its oracle, its folder's manifest), gives each
source folder a number so that two artifacts called ``model.onnx`` stay apart, and
sends the command with paths relative to the run folder the device lays out. Device
rows come back as the same objects the local command makes, labelled
``RUNTIME@NAME`` and pointing at the host's files, so the table, the failure lines
and the exit code treat them like any other row. A validation on the devices runs
in threads while the host validates; a profile waits for the host's timing, so the
two do not share a CPU while either is timed.

A latency measured under emulation is never a timing: such rows are printed, marked
"emulated: not a timing", and no ratio or verdict reads them.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from cr_edge.devices import registry, reports
from cr_edge.devices.registry import Device
from cr_edge.devices.remote import DeviceRun, progress_bar_factory, run_command
from cr_edge.errors import InputError
from cr_edge.profile.profiler import ProfileReport
from cr_edge.runtimes.safe_load import COMPANION_TAG, DEFAULT_ORACLE, ORACLE_SUFFIX
from cr_edge.validate.outcome import UNAVAILABLE
from cr_edge.validate.tolerances import Overrides
from cr_edge.validate.validator import RuntimeResult, ValidationReport

NOT_A_TIMING = "emulated: not a timing"
_FORMATS = (".onnx", ".ort", ".pte")
MANIFEST = "manifest.json"


@dataclass(frozen=True)
class DevicesValidation(ValidationReport):
    """A validation whose rows include each device's, with the devices' fingerprints."""

    devices: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return {**super().to_json(), "devices": self.devices}


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


def validation_rows(run: DeviceRun) -> list[RuntimeResult]:
    """The device's rows, labelled ``RUNTIME@NAME``, naming the host's files; rows on which the
    device ran nothing (every parity column unavailable there) are left out."""
    rows = []
    for r in reports.rows(run.report):
        if r.outputs.status == UNAVAILABLE and r.derivatives.status == UNAVAILABLE:
            continue
        rows.append(
            RuntimeResult(
                artifact=run.remote_paths.get(r.artifact, r.artifact),
                runtime=f"{r.runtime}@{run.name}",
                loaded=r.loaded and run.remote_paths.get(r.loaded, r.loaded),
                outputs=r.outputs,
                derivatives=r.derivatives,
                coverage=r.coverage,
                tolerances=r.tolerances,
            )
        )
    return rows


def validate_on(
    devices: list[Device],
    artifacts: list[Path],
    argv: list[str],
    ref: Path | None,
    local: Callable[[], ValidationReport],
) -> DevicesValidation:
    """``local()`` here while each device validates the same artifacts; every row together."""
    files, paths = layout(artifacts, "validate", ref)
    if ref is not None:
        argv = [*argv, "--ref", f"ref/{Path(ref).name}"]
    pending = start(devices, "validate", files, [*paths, *argv])
    report = local()
    runs = pending.wait()
    rows = list(report.results)
    for run in runs:
        rows += validation_rows(run)
    return DevicesValidation(rows, {run.name: run.describe() for run in runs})


def profile_on(devices: list[Device], artifacts: list[Path], argv: list[str]) -> list[DeviceRun]:
    """Each device profiles the artifacts, one after the other (two timings never share the
    host's CPU, as two emulated or loopback devices would); rows name the host's files."""
    files, paths = layout(artifacts, "profile")
    runs = [start([d], "profile", files, [*paths, *argv]).wait()[0] for d in devices]
    for run in runs:
        for row in run.report.get("results", []):
            row["artifact"] = run.remote_paths.get(row["artifact"], row["artifact"])
            row["file"] = run.remote_paths.get(row["file"], row["file"])
            row["runtime"] = f"{row['runtime']}@{run.name}"
            if run.emulated:
                row["timing"] = NOT_A_TIMING
        if run.emulated:
            run.report["comparisons"] = []  # no ratio reads an emulated latency
    return runs


def validate_argv(
    runtimes: tuple[str, ...] | list[str] | str,
    derivatives: str,
    overrides: Overrides | None,
    force: bool,
) -> list[str]:
    """The options of a local ``validate`` call, as the device's command line takes them."""
    names = runtimes if isinstance(runtimes, str) else ",".join(runtimes)
    argv = ["--runtime", names, "--derivatives", derivatives]
    for name in ("atol", "rtol", "deriv_rtol", "min_cosine"):
        value = getattr(overrides, name, None) if overrides else None
        if value is not None:
            argv += [f"--{name.replace('_', '-')}", repr(float(value))]
    return [*argv, "--accept-failed-export"] if force else argv


def profile_json(runs: list[DeviceRun]) -> dict:
    """The ``devices`` section of a profile report: each device's fingerprint and rows."""
    return {
        run.name: {
            **run.describe(),
            "timing": NOT_A_TIMING if run.emulated else "measured on the device",
            "results": run.report.get("results", []),
            "comparisons": run.report.get("comparisons", []),
        }
        for run in runs
    }


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


@dataclass
class DevicesProfile(ProfileReport):
    """A profile of this machine, with each device's runs (``device_runs``)."""

    device_runs: list[DeviceRun] = field(default_factory=list)

    def to_json(self) -> dict:
        return {**super().to_json(), "devices": profile_json(self.device_runs)}


def profile_with_devices(report: ProfileReport, runs: list[DeviceRun]) -> DevicesProfile:
    """``report`` with the devices' runs beside it, for printing and for the JSON report."""
    fields = {k: getattr(report, k) for k in report.__dataclass_fields__}
    return DevicesProfile(**fields, device_runs=runs)
