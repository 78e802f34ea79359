"""``validate --on`` and ``profile --on``: the local command, then the same on each device.

``launch`` starts the devices (which files, which options, a thread each). Device
rows come back as the same objects the local command makes, labelled
``RUNTIME@NAME`` and pointing at the host's files, so the table, the failure lines
and the exit code treat them like any other row. A validation on the devices runs
in threads while the host validates; a profile waits for the host's timing, so the
two do not share a CPU while either is timed.

A latency measured under emulation is never a timing: such rows are printed, marked
"emulated: not a timing", and no ratio or verdict reads them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from cr_edge.devices import reports
from cr_edge.devices.launch import Pending, layout, start, start_validation
from cr_edge.devices.registry import Device
from cr_edge.devices.remote import DeviceRun
from cr_edge.profile.profiler import ProfileReport
from cr_edge.validate.outcome import UNAVAILABLE
from cr_edge.validate.validator import RuntimeResult, ValidationReport

NOT_A_TIMING = "emulated: not a timing"


@dataclass(frozen=True)
class DevicesValidation(ValidationReport):
    """A validation whose rows include each device's, with the devices' fingerprints."""

    devices: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return {**super().to_json(), "devices": self.devices}


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
    pending = start_validation(devices, artifacts, argv, ref)
    return with_devices(local(), pending)


def with_devices(report: ValidationReport, pending: Pending) -> DevicesValidation:
    """``report`` with the rows of the devices ``pending`` runs on, once they have finished."""
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
    return [label_profile(run) for run in runs]


def label_profile(run: DeviceRun) -> DeviceRun:
    """Rows named ``RUNTIME@NAME`` with the host's paths; an emulated device's latencies
    marked as no timing, and its comparisons (ratios of latencies) dropped."""
    for row in run.report.get("results", []):
        row["artifact"] = run.remote_paths.get(row["artifact"], row["artifact"])
        row["file"] = run.remote_paths.get(row["file"], row["file"])
        row["runtime"] = f"{row['runtime']}@{run.name}"
        if run.emulated:
            row["timing"] = NOT_A_TIMING
    if run.emulated:
        run.report["comparisons"] = []  # no ratio reads an emulated latency
    return run


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
