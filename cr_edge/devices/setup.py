"""``device check`` and ``device setup``: what a device is, and cr-edge's core installed on it.

``setup`` never lets the device reach a package index. The host asks the device for
its architecture, C library and Python, downloads wheels for exactly that platform
(``pip download --platform ... --only-binary=:all:``) of cr-edge's core dependencies as
its own metadata lists them (numpy, onnx, onnxruntime, click, rich, onnx-ir, filelock:
never torch, which is an extra), builds cr-edge's own wheel from its source tree,
pushes them content-addressed, and has the device's ``python3`` make
``<workdir>/venv`` and install them with ``--no-index``. pip itself runs from its
wheel (``python pip.whl/pip``), so a minimal Python without ``ensurepip`` will do.
A stamp of the wheels' digests makes a second setup a no-op; ``--force`` reinstalls.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path

from cr_edge.devices.registry import Device
from cr_edge.devices.remote import (
    VENV_PYTHON,
    device_python,
    named,
    open_transport,
    open_workdir,
    progress_bar_factory,
    push_blobs,
    run_agent,
)
from cr_edge.devices.transport import DeviceError, Transport, file_digest, last_line
from cr_edge.devices.url import EMULATED
from cr_edge.errors import InputError

SYSTEM_PYTHON = "python3"
_FINGERPRINT = Path(__file__).with_name("fingerprint.py")
SETUP_TIMEOUT = 1800.0  # pip install of onnxruntime on a slow board takes minutes
ARCHES = {"aarch64": "aarch64", "arm64": "aarch64", "x86_64": "x86_64", "amd64": "x86_64"}


def fingerprint_with(transport: Transport, python: str) -> dict | None:
    """The fingerprint from ``python`` on the device; None when there is no such Python."""
    code, out, err = transport.run(
        [python, "-", transport.workdir],
        stdin=_FINGERPRINT.read_bytes(),
        timeout=max(getattr(transport, "timeout", 30.0), 120.0),
        max_output=1 << 20,
    )
    if code != 0:
        if code in (126, 127) or "No such file" in err.decode(errors="replace"):
            return None
        raise DeviceError(f"{transport.label}: {python} failed: {last_line(err) or f'exit {code}'}")
    from cr_edge.devices import reports

    return reports.fingerprint(reports.parse(out, transport.label, "its fingerprint"))


def check_device(device: Device) -> dict:
    """The device's fingerprint, from the Python cr-edge runs there, else its ``python3``."""
    transport = open_transport(device)
    open_workdir(transport, [])
    python = device_python(device, transport.workdir)
    info = fingerprint_with(transport, python)
    note = None
    if info is None:
        info = fingerprint_with(transport, SYSTEM_PYTHON)
        if info is None:
            raise DeviceError(
                f"{transport.label}: no Python at {python} nor {SYSTEM_PYTHON}; install Python 3 "
                f"there, then run cr-edge device setup {device.name}"
            )
        note = f"not set up: run cr-edge device setup {device.name}"
    elif not info.get("cr_edge"):
        note = f"no cr-edge in {python}: run cr-edge device setup {device.name}"
    named(device, info)
    return {
        "device": device.name,
        "url": device.url,
        "workdir": transport.workdir,
        "runs_with": python,
        **info,
        **({"setup": note} if note else {}),
    }


def setup_device(device: Device, force: bool = False) -> str:
    """Install cr-edge's core in ``<workdir>/venv``; one line saying what was done."""
    if device.parsed.kind == EMULATED:
        return f"device {device.name}: the emulated root carries cr-edge's core; nothing to set up"
    transport = open_transport(device)
    open_workdir(transport, [])
    info = fingerprint_with(transport, SYSTEM_PYTHON)
    if info is None:
        raise DeviceError(
            f"{transport.label}: no {SYSTEM_PYTHON} on the device; install Python 3 there first"
        )
    with tempfile.TemporaryDirectory(prefix="cr-edge-wheels-") as folder:
        wheels = download_wheels(info, Path(folder), transport.label)
        files = {file_digest(w)[0]: w for w in wheels}
        missing = open_workdir(transport, sorted(files))
        if missing:
            total = sum(files[d].stat().st_size for d in missing)
            bar = progress_bar_factory()
            push_blobs(transport, {d: files[d] for d in missing}, bar(total) if bar else None)
        pip = next((w.name for w in wheels if w.name.startswith("pip-")), None)
        spec = {
            "action": "setup",
            "lock": "exclusive",
            "force": force,
            "files": sorted([w.name, d] for d, w in files.items()),
            "pip_wheel": pip,
            "requirements": [f"cr-edge=={metadata.version('cr-edge')}"],
        }
        envelope = run_agent(transport, SYSTEM_PYTHON, spec, device.name, SETUP_TIMEOUT)
    done = envelope["message"]
    where = f"{transport.workdir}/{VENV_PYTHON}"
    extra = (
        f"; the device runs {device.python} (its python setting), not the venv"
        if device.python
        else ""
    )
    return f"device {device.name}: {done} ({len(files)} wheels, {len(missing)} pushed) in {where}{extra}"


def core_requirements() -> list[str]:
    """cr-edge's own dependencies without extras, as its installed metadata lists them."""
    requires = metadata.requires("cr-edge") or []
    core = [r for r in requires if "extra ==" not in r]
    names = [re.split(r"[\s;<>=!~\[]", r, maxsplit=1)[0].lower() for r in core]
    if "torch" in names:
        raise InputError("cr-edge's core dependencies list torch; the device install refuses it")
    return core


def platform_tags(info: dict) -> list[str]:
    """pip's ``--platform`` tags for the device: manylinux for its glibc, down to 2.17."""
    arch = ARCHES.get(str(info.get("arch")))
    libc = re.match(r"glibc (\d+)\.(\d+)", str(info.get("libc") or ""))
    if arch is None or libc is None:
        raise InputError(
            f"device {info.get('arch')} with {info.get('libc') or 'an unknown C library'}: "
            "cr-edge can set up Linux aarch64/x86_64 with glibc; install cr-edge's core there by hand"
        )
    major, minor = int(libc.group(1)), int(libc.group(2))
    tags = [f"manylinux_{major}_{m}_{arch}" for m in range(minor, 16, -1)]
    return [*tags, f"manylinux2014_{arch}"]


def download_wheels(info: dict, folder: Path, label: str) -> list[Path]:
    """Wheels of cr-edge's core for the device's platform and Python, and cr-edge's own."""
    version = ".".join(str(info.get("python", "")).split(".")[:2])
    if not re.fullmatch(r"3\.\d+", version):
        raise DeviceError(f"{label}: Python {info.get('python')!r} is not a Python 3")
    command = [
        sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
        "--dest", str(folder), "--only-binary=:all:", "--implementation", "cp",
        "--python-version", version,
        *(x for tag in platform_tags(info) for x in ("--platform", tag)),
        *core_requirements(), "pip",
    ]  # fmt: skip
    _pip(command, "pip download")
    source = Path(__file__).resolve().parents[2]
    if not (source / "pyproject.toml").is_file():
        raise InputError(f"{source}: no cr-edge source tree to build its wheel from")
    built = folder / "own"
    _pip(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--wheel-dir",
            str(built),
            str(source),
        ],
        "pip wheel (cr-edge's own wheel)",
    )
    own = sorted(built.glob("cr_edge-*.whl"))
    if not own:
        raise InputError("pip wheel made no cr_edge wheel")
    return sorted(folder.glob("*.whl")) + own


def _pip(command: list[str], what: str) -> None:
    proc = subprocess.run(command, capture_output=True, text=True)
    if proc.returncode != 0:
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        raise InputError(f"{what} failed: {lines[-1] if lines else f'exit {proc.returncode}'}")
