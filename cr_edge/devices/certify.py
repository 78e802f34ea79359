"""``quantize --certify-on NAME[,NAME]``: each candidate validated here and on the devices.

The quantize stage takes a ``certification.Certify`` hook (it may not import devices);
``DeviceCertifier`` is that hook. For one candidate (its model, companion and oracle
in a temporary folder) it runs ``validate --runtime cpu`` on this machine and on every
device at once (``commands.validate_on``: content-addressed pushes, so the oracle is
pushed once), and turns each device's row into a ``DeviceVerdict``: passed only if its
outputs and derivatives pass there (a column measured here must be measured and pass
there too), with the error on each side, the tolerance, and, where the device
disagrees with the host, the likely cause from its fingerprint (``diagnosis``).

``resolve`` reads ``--certify-on``: device names, ``none``, or ``auto`` (the built-in
emulated ARM64 device on a Neoverse-N1, with fp16 arithmetic and dotprod, where it can
be built; otherwise nothing, with the one-line reason as a note).
"""

from __future__ import annotations

from cr_edge.devices import commands, diagnosis, launch
from cr_edge.devices.registry import Device
from cr_edge.errors import InputError
from cr_edge.quantize.certification import CandidateFiles, DeviceVerdict
from cr_edge.validate.outcome import FAIL, PASS, UNAVAILABLE
from cr_edge.validate.validator import RuntimeResult

AUTO, NONE = "auto", "none"
AUTO_CPU = "neoverse-n1"  # ARMv8.2 with fp16 arithmetic and dotprod: a recent phone's core
RUNTIME = "cpu"


def resolve(certify_on: str | list[str] | tuple[str, ...] | None) -> tuple[list[Device], str]:
    """The devices ``--certify-on`` names, and a note when ``auto`` found none to build."""
    if certify_on is None:
        return [], ""
    parts = [certify_on] if isinstance(certify_on, str) else list(certify_on)
    names = [n.strip() for p in parts for n in p.split(",")]
    if names == [NONE] or names == [""]:
        return [], ""
    if names == [AUTO]:
        from cr_edge.devices.emulated import emulated_prefix

        try:
            emulated_prefix(AUTO_CPU)  # built on first use; one line when it cannot be
        except InputError as e:
            return [], f"not certified on the emulated ARM64 device ({AUTO_CPU}): {e}"
        return [Device(AUTO_CPU, f"emulated:arm64/{AUTO_CPU}")], ""
    if {AUTO, NONE} & set(names):
        raise InputError(f"--certify-on {','.join(names)}: give auto, none, or device names")
    return launch.parse_names(names), ""


class DeviceCertifier:
    """The ``Certify`` hook over ``devices``; ``first_only``: stop at the first candidate
    that passes everywhere (the pipeline), else certify every candidate auto could keep."""

    def __init__(self, devices: list[Device], first_only: bool = False) -> None:
        if not devices:
            raise InputError("--certify-on: no device to certify on")
        self._devices = devices
        self.devices = [d.name for d in devices]
        self.first_only = first_only

    def __call__(self, candidate: CandidateFiles) -> list[DeviceVerdict]:
        from cr_edge.validate.tolerances import Overrides
        from cr_edge.validate.validator import validate

        model = candidate.model
        argv = launch.validate_argv(RUNTIME, "auto")

        def here():
            return validate([model], RUNTIME, candidate.oracle, Overrides(), "auto")

        report = commands.validate_on(self._devices, [model], argv, candidate.oracle, here)
        host = _row(report.results, RUNTIME)
        kind = diagnosis.kernels_of(model)
        return [
            verdict(
                name,
                host,
                _row(report.results, f"{RUNTIME}@{name}"),
                report.devices.get(name, {}),
                kind,
            )
            for name in self.devices
        ]


def _row(rows: list[RuntimeResult], runtime: str) -> RuntimeResult | None:
    return next((r for r in rows if r.runtime == runtime), None)


def verdict(
    name: str,
    host: RuntimeResult | None,
    device: RuntimeResult | None,
    entry: dict,
    kind: str,
) -> DeviceVerdict:
    """One device's verdict on one candidate, from its validate row and the host's."""
    fingerprint = entry.get("fingerprint") or {}
    emulated = bool(entry.get("emulated"))
    if device is None:
        return DeviceVerdict(
            name, False, "outputs", diagnosis.headline_error(host, "outputs"), None, diagnosis.tolerance_of(host, "outputs"),
            detail=f"validate ran nothing on the {RUNTIME} runtime there",
            fingerprint=fingerprint, emulated=emulated,
        )  # fmt: skip
    failed = []
    for column in ("outputs", "derivatives"):
        there = getattr(device, column).status
        measured_here = host is not None and getattr(host, column).status != UNAVAILABLE
        if there == FAIL or (measured_here and there != PASS):
            failed.append(column)
    check = failed[0] if failed else "outputs"
    host_error, device_error = (
        diagnosis.headline_error(host, check),
        diagnosis.headline_error(device, check),
    )
    tolerance = diagnosis.tolerance_of(device, check)
    host_passed = host is not None and getattr(host, check).status != FAIL
    cause = None
    if diagnosis.disagrees(host_error, device_error, host_passed, not failed):
        cause = diagnosis.likely_cause(kind, fingerprint)
    detail = "; ".join(
        c.describe() for col in failed for c in getattr(device, col).checks if not c.passed
    ) or "; ".join(getattr(device, col).summary for col in failed)
    return DeviceVerdict(
        name, not failed, check, host_error, device_error, tolerance, cause, detail,
        fingerprint, emulated, diagnosis.relative_of(device, check),
    )  # fmt: skip


def certifier(
    certify_on: str | list[str] | tuple[str, ...] | None, first_only: bool = False
) -> tuple[DeviceCertifier | None, str]:
    """The hook ``--certify-on`` asks for (None: no device), and ``resolve``'s note."""
    devices, note = resolve(certify_on)
    return (DeviceCertifier(devices, first_only) if devices else None), note


def summary_entry(result, note: str) -> dict:
    """The pipeline summary's ``certified`` entry for a ``QuantizeResult``: the devices,
    the kept model's verdicts, and each candidate a device turned down with the reason."""
    chosen = result.chosen
    return {
        "on": list(result.certified_on),
        "note": note,
        "chosen": {n: _brief(v) for n, v in (chosen.devices if chosen else {}).items()},
        "refused": {
            t.policy.label: [v.reason() for v in t.devices.values() if not v.passed]
            for t in result.tried
            if any(not v.passed for v in t.devices.values())
        },
    }


def _brief(v: DeviceVerdict) -> dict:
    return {
        "passed": v.passed,
        "check": v.check,
        "host_error": v.host_error,
        "device_error": v.device_error,
        "tolerance": v.bound(),
        "cause": v.cause,
        "cpu": v.fingerprint.get("cpu"),
        "isa": v.fingerprint.get("isa"),
    }


def summary_lines(entry: dict | None) -> list[str]:
    """The summary.md lines of ``summary_entry``: where it was certified, or why not."""
    if not entry:
        return []
    if not entry["on"]:
        return [f"- {entry['note'] or 'not certified on a device (--certify-on none)'}"]
    lines = []
    for name, v in entry["chosen"].items():
        lines.append(
            f"- certified on @{name} ({v['cpu']}): {v['check']} error {v['device_error']:.3g} "
            f"there, {v['host_error']:.3g} here, tolerance {v['tolerance']}"
        )
    for label, reasons in entry["refused"].items():
        lines += [f"- {label} not kept: {r}" for r in reasons]
    return lines
