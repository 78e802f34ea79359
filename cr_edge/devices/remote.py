"""Push, run, pull: one cr-edge command on one device, from the host.

1. ``run_agent`` sends ``agent.py`` (with ``fingerprint.py`` and ``warm.py``) to the
   device's Python with the command's spec. In that one round trip the agent creates
   the workdir (0700), makes its path absolute and checks which of the files' sha256 it
   lacks under ``blobs/``; if it lacks any it says so and runs nothing.
2. The missing files are pushed, content-addressed (``blobs/<sha256>``, temporary
   name, checked, renamed), and the agent is asked again: a second run pushes nothing
   and costs one round trip, an interrupted one leaves nothing a later run takes as
   complete.
3. The agent locks the workdir, lays the blobs out under the file names the host uses,
   runs ``cr-edge COMMAND ... --json`` there and returns one JSON envelope. With
   nothing to push, it first asks the device's warm server (``warm.py``: cr-edge
   imported already, a fork per command); without one it runs a new Python (cold)
   and starts a server for the next command.
4. The envelope is read with a size cap and checked (``reports``) before any of it is
   believed: a device is a machine the host does not control.

Every failure is a ``DeviceError`` (exit 2, one line naming the device); a device that
lacks Python or cr-edge's packages says "run cr-edge device setup NAME".
"""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from cr_edge.devices import external
from cr_edge.devices.registry import Device
from cr_edge.devices.transport import (
    DeviceError,
    ExecTransport,
    Progress,
    SshTransport,
    Transport,
    file_digest,
    last_line,
)
from cr_edge.devices.url import DEFAULT_SSH_WORKDIR, EMULATED, SSH

VENV_PYTHON = "venv/bin/python"  # under the workdir: what ``device setup`` makes
MAX_ENVELOPE = 16 << 20  # bytes: a report of thousands of rows is a few MB
RUN_TIMEOUT = 3600.0  # a validation under emulation takes minutes, not hours
LOCK_TIMEOUT = 600.0  # how long a command waits for another one on the same device
WARM_ACK = 10.0  # seconds a device's warm server has to take a command before it runs cold
INIT_SH = (
    "umask 077; "
    'case $1 in /*) ;; *) cd || exit 90 ;; esac; mkdir -p -- "$1" && chmod 700 -- "$1" '
    '&& cd -- "$1" && mkdir -p blobs runs && pwd -P || exit 90; shift; '
    'for s; do [ -f "blobs/$s" ] || echo "$s"; done; '
    "find blobs -name '.part-*' -mmin +60 -exec rm -f {} + 2>/dev/null; exit 0"
)
_SOURCES = Path(__file__).parent
DEVICE_SIDE = ("fingerprint.py", "warm.py", "agent.py")  # run on the device, in one namespace
BOOTSTRAP = (
    "import sys\n"
    "ns = {'__name__': 'cr_edge_agent', 'SOURCES': SOURCES}\n"
    "for name in " + repr(DEVICE_SIDE) + ":\n"
    "    exec(compile(SOURCES[name], name, 'exec'), ns)\n"
    "sys.exit(ns['main'](sys.argv[1:]))\n"
)
# what a warm server imports before it serves: the imports of validate and profile
PRELOAD = (
    "numpy",
    "onnx",
    "onnxruntime",
    *(
        f"cr_edge.{module}"
        for module in (
            "cli",
            "validate.parity_table",
            "validate.validator",
            "runtimes.ort",
            "profile.profiler",
        )
    ),
)


@dataclass
class DeviceRun:
    """What one device returned: its fingerprint and the command's report, both checked."""

    name: str
    url: str
    emulated: bool
    fingerprint: dict
    report: dict
    exit_code: int
    pushed: list[str] = field(default_factory=list)  # file names pushed this time
    remote_paths: dict[str, str] = field(default_factory=dict)  # device rel path -> host path
    warm: bool = False  # run by the device's warm server (cr-edge imported already)

    def describe(self) -> dict:
        """The report's ``devices`` entry: URL, fingerprint, and what was pushed."""
        return {
            "url": self.url,
            "emulated": self.emulated,
            "fingerprint": self.fingerprint,
            "exit_code": self.exit_code,
            "pushed": self.pushed,
            "warm": self.warm,
        }


def label(device: Device) -> str:
    return f"device {device.name} ({device.url})"


def open_transport(device: Device) -> Transport:
    """The transport for ``device``; an emulated device builds its ARM64 root on first use."""
    url = device.parsed
    if url.kind == SSH:
        return SshTransport(
            url.host,
            label(device),
            device.workdir or url.workdir or DEFAULT_SSH_WORKDIR,
            device.timeout,
            url.user,
            url.port,
            device.ssh_config,
            device.ssh_options,
        )
    if url.kind == EMULATED:
        from cr_edge.devices.emulated import EMULATED_WORKDIR, emulated_prefix

        prefix = emulated_prefix(url.cpu)
        return ExecTransport(prefix, label(device), device.workdir or EMULATED_WORKDIR, 600.0)
    return ExecTransport(
        url.prefix, label(device), device.workdir or DEFAULT_SSH_WORKDIR, device.timeout
    )


def device_python(device: Device, workdir: str) -> str:
    """The Python that runs cr-edge there: the registry's ``python``, else setup's venv."""
    if device.python:
        return device.python
    if device.parsed.kind == EMULATED:
        from cr_edge.devices.emulated import EMULATED_PYTHON

        return EMULATED_PYTHON
    return f"{workdir}/{VENV_PYTHON}"


def open_workdir(transport: Transport, digests: list[str]) -> list[str]:
    """Create the workdir (0700), make ``transport.workdir`` absolute; the digests it lacks."""
    code, out, err = transport.run(
        ["sh", "-c", INIT_SH, "sh", transport.workdir, *digests], timeout=_timeout(transport)
    )
    lines = out.decode(errors="replace").splitlines()
    if code != 0 or not lines or not lines[0].startswith("/"):
        why = last_line(err) or f"exit {code}"
        raise DeviceError(
            f"{transport.label}: cannot create its workdir {transport.workdir}: {why}"
        )
    transport.workdir = lines[0]
    missing = lines[1:]
    if any(d not in digests for d in missing):
        raise DeviceError(f"{transport.label}: answered the blob listing with something else")
    return missing


def push_blobs(
    transport: Transport, files: dict[str, Path], on_bytes: Progress | None = None
) -> None:
    """Push each ``digest -> local file`` to ``blobs/<digest>``."""
    push_files(transport, {f"blobs/{d}": path for d, path in files.items()}, on_bytes)


def push_files(
    transport: Transport, files: dict[str, Path], on_bytes: Progress | None = None
) -> None:
    """Push each ``workdir rel path -> local file`` (checked, renamed into place)."""
    for rel, path in files.items():
        transport.push(path, rel, on_bytes)


def stored_path(rel: str, digest: str, bundles: dict[str, str]) -> str:
    """Where the device keeps a file (the agent's ``_stored``): ``blobs/<sha256>``, or
    ``bundles/<id>/<name>`` for a folder with external data (``external``)."""
    prefix, _, name = rel.partition("/")
    return f"bundles/{bundles[prefix]}/{name}" if prefix in bundles else f"blobs/{digest}"


def run_agent(
    transport: Transport,
    python: str,
    spec: dict,
    device_name: str,
    timeout: float = RUN_TIMEOUT,
) -> dict:
    """Run ``agent.py`` on the device with ``spec``; its envelope, size-capped and checked."""
    sources = {name: (_SOURCES / name).read_text(encoding="utf-8") for name in DEVICE_SIDE}
    script = f"SOURCES = {dict(sources, boot=BOOTSTRAP)!r}\n" + BOOTSTRAP
    spec = {"workdir": transport.workdir, "lock_timeout": LOCK_TIMEOUT, **spec}
    code, out, err = transport.run(
        [python, "-", json.dumps(spec)],
        stdin=script.encode(),
        timeout=timeout,
        max_output=MAX_ENVELOPE,
    )
    if code in (126, 127) or (code != 0 and not out and _no_python(err)):
        raise DeviceError(
            f"{transport.label}: no usable Python at {python} ({last_line(err) or f'exit {code}'}); "
            f"run cr-edge device setup {device_name}"
        )
    from cr_edge.devices import reports  # onnx and onnxruntime: not before they are needed

    envelope = reports.envelope(out, transport.label)
    if envelope["status"] == "missing" and spec.get("open"):
        return envelope  # ``run_command`` pushes the blobs the device lacks
    if envelope["status"] == "setup":
        raise DeviceError(
            f"{transport.label}: {envelope['message']}; run cr-edge device setup {device_name}"
        )
    if envelope["status"] != "ok":
        why = envelope["message"] or last_line(err) or f"exit {code}"
        said = last_line(envelope.get("stderr", "").encode())
        raise DeviceError(f"{transport.label}: {why}{f' ({said})' if said else ''}")
    return envelope


def run_command(
    device: Device,
    command: str,
    files: list[tuple[str, Path]],
    argv: list[str],
    progress: Callable[[int], Progress | None] | None = None,
) -> DeviceRun:
    """Run ``cr-edge COMMAND ARGV`` on ``device`` with ``files`` (device rel path, host path).

    ``progress(total_bytes)`` is asked for a byte callback when there is anything to push.
    """
    bundles = external.bundles(files)
    if bundles and device.parsed.kind == EMULATED:
        raise DeviceError(
            f"{label(device)}: a model with external data needs /proc, which the emulated "
            "root has not (onnxruntime opens the data through /proc/self/fd); save it without "
            "external data to run it there"
        )
    transport = open_transport(device)
    digests = {rel: file_digest(path)[0] for rel, path in files}
    stored = {stored_path(rel, digests[rel], bundles): path for rel, path in files}
    spec = {
        "action": "run",
        "open": True,  # the agent makes the workdir and lists what it lacks: one round trip
        "lock": "exclusive" if command == "profile" else "shared",
        "files": [[rel, digests[rel]] for rel, _ in files],
        "argv": [command, *argv],
        "max_report": MAX_ENVELOPE // 2,
        "bundles": bundles,
        "keep_warm": keep_warm(device),
        "warm_ack": WARM_ACK,
        "preload": list(PRELOAD),
    }
    if not (device.python or device.parsed.kind == SSH or transport.workdir.startswith("/")):
        open_workdir(transport, [])  # the venv's Python is named by its absolute path
    python = device_python(device, transport.workdir)
    envelope = run_agent(transport, python, spec, device.name)
    pushed: set[str] = set()
    for _ in range(3):  # again only if a device clean removed a blob between push and run
        if envelope["status"] != "missing":
            break
        transport.workdir = _absolute(envelope, transport)
        missing = envelope.get("missing")
        if not isinstance(missing, list) or not missing or any(m not in stored for m in missing):
            raise DeviceError(f"{transport.label}: answered the blob listing with something else")
        todo = {m: stored[m] for m in missing}
        total = sum(p.stat().st_size for p in todo.values())
        on_bytes = progress(total) if progress else None
        try:
            push_files(transport, todo, on_bytes)
        finally:
            if on_bytes is not None and hasattr(on_bytes, "finish"):
                on_bytes.finish()
        pushed |= {p.name for p in todo.values()}
        envelope = run_agent(transport, python, spec, device.name)
    if envelope["status"] != "ok":
        raise DeviceError(f"{transport.label}: pushed files keep going missing on the device")
    named(device, envelope["fingerprint"])
    from cr_edge.devices import reports

    check = reports.validation if command == "validate" else reports.profile
    report = check(envelope.get("report"), transport.label)
    return DeviceRun(
        device.name,
        device.url,
        device.parsed.kind == EMULATED,
        envelope["fingerprint"],
        report,
        envelope.get("exit_code", 0),
        pushed=sorted(pushed),
        remote_paths={rel: str(path) for rel, path in files},
        warm=envelope.get("warm") is True,
    )


def keep_warm(device: Device) -> float:
    """Seconds the device's warm server stays up without a command (0: none).

    None on an emulated device: its root is shared by CPU models, and an idle emulated
    Python holds hundreds of MB of the host's memory for a speed-up nobody times."""
    return 0.0 if device.parsed.kind == EMULATED else float(device.keep_warm)


def _absolute(envelope: dict, transport: Transport) -> str:
    workdir = envelope.get("workdir")
    if not isinstance(workdir, str) or not workdir.startswith("/") or "\x00" in workdir:
        raise DeviceError(f"{transport.label}: answered without its workdir's path")
    return workdir


def named(device: Device, fingerprint: dict) -> dict:
    """An emulated CPU has no model name the guest can read: it is the one qemu was given."""
    url = device.parsed
    if url.kind == EMULATED and fingerprint.get("cpu") in (None, "unknown"):
        fingerprint["cpu"] = f"{url.cpu} (qemu)"
    return fingerprint


def _timeout(transport: Transport) -> float:
    return float(getattr(transport, "timeout", 30.0))


def _no_python(err: bytes) -> bool:
    text = err.decode(errors="replace")
    return "No such file or directory" in text or "not found" in text


def progress_bar_factory() -> Callable[[int], Progress | None] | None:
    """Push progress on stderr when it is a terminal (else None): one rich bar per push,
    all in one display, which closes when every push has finished."""
    if not sys.stderr.isatty():
        return None
    return _PushBars()


class _PushBars:
    """One rich ``Progress`` shared by the pushes of several devices (threads)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.bar = None
        self.open = 0

    def __call__(self, total: int) -> Progress:
        from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

        with self.lock:
            if self.bar is None:
                self.bar = Progress(
                    "push", BarColumn(), DownloadColumn(), TransferSpeedColumn(), transient=True
                )
                self.bar.start()
            bar = self.bar
            task = bar.add_task("push", total=total)
            self.open += 1
        state = {"sent": 0, "open": True}

        def finish() -> None:
            """Close this push's bar (finished or failed); the display goes with the last."""
            with self.lock:
                if not state["open"]:
                    return
                state["open"] = False
                self.open -= 1
                if self.open == 0 and self.bar is not None:
                    self.bar.stop()
                    self.bar = None

        def update(n: int) -> None:
            state["sent"] += n
            bar.update(task, completed=state["sent"])
            if state["sent"] >= total:
                finish()

        update.finish = finish  # type: ignore[attr-defined]
        return update
