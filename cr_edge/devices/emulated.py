"""The emulated ARM64 device: a Debian arm64 root run under qemu user mode.

``emulated_prefix(cpu)`` is all a transport needs: an argument vector that runs a
command inside the root on an emulated CPU model, such as ``cortex-a72`` (ARMv8.0:
no fp16 arithmetic, no dotprod) or ``neoverse-n1`` (ARMv8.2: both). onnxruntime in the
root picks its kernels from the emulated CPU's HWCAP, so the same model can take
other code paths than on the host, which is the point of certifying on it.

On first use the root is built into the user's cache folder (``arm64_root``), under a
lock so two processes never build at once; later uses only refresh the ``cr_edge``
code when the host's package changed. The kernel runs the root's aarch64 binaries
through ``binfmt_misc``: qemu-aarch64-static is registered with flag F (the kernel
keeps the interpreter open, so it need not exist inside the root), which needs root,
as ``chroot`` does. Whatever is missing is named in one line with how to get it.

Under emulation a latency is never a timing (ARCHITECTURE.md, timing rule).
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import filelock

from cr_edge.devices import arm64_root
from cr_edge.errors import InputError

EMULATED_PYTHON = "/" + arm64_root.VENV + "/bin/python"  # /opt/cr-edge/venv/bin/python
EMULATED_WORKDIR = "/" + arm64_root.WORK  # /opt/cr-edge/work
DEFAULT_CPU = "cortex-a72"
# CPU models qemu-aarch64 emulates (7.2 knows all but cortex-a55/neoverse-v1/n2, which
# later releases add). Without fp16 arithmetic or dotprod: a35, a53, a57, a72; with
# both: a55, a76, neoverse-n1 and later; max: every feature qemu implements.
KNOWN_CPUS = (
    "cortex-a35",
    "cortex-a53",
    "cortex-a55",
    "cortex-a57",
    "cortex-a72",
    "cortex-a76",
    "neoverse-n1",
    "neoverse-n2",
    "neoverse-v1",
    "a64fx",
    "max",
)
INSTALL_HINT = "apt-get install qemu-user-static debootstrap, and run as root"

BINFMT_DIR = Path("/proc/sys/fs/binfmt_misc")
BINFMT_NAME = "cr-edge-aarch64"
# ELF64, little-endian, e_machine = 183 (EM_AARCH64); the mask ignores the ABI
# version byte and lets e_type be EXEC or DYN: Debian's qemu-user-static entry.
_MAGIC = "7f454c460201010000000000000000000200b700"
_MASK = "ffffffffffffff00fffffffffffffffffeffffff"
_BUILD_TIMEOUT_S = 900.0  # another process building the root: wait this long at most

Log = Callable[[str], None]


def emulated_root() -> Path:
    """Where the arm64 root lives: ``$XDG_CACHE_HOME/cr-edge/arm64-root`` (~/.cache by default)."""
    cache = os.environ.get("XDG_CACHE_HOME", "")
    base = Path(cache) if os.path.isabs(cache) else Path.home() / ".cache"
    return base / "cr-edge" / "arm64-root"


def emulated_prefix(cpu: str, log: Log | None = None) -> list[str]:
    """argv prefix running a command in the arm64 root on the emulated ``cpu``.

    Builds the root on first use (about a minute; one line per step to ``log``) and
    refreshes its ``cr_edge`` code; registers qemu with binfmt_misc if needed. The
    command runs with a clean environment (nothing of the host's PYTHONPATH or venv)
    and ``QEMU_CPU`` set, which every process it starts inherits.
    """
    log = log or _stderr
    check_cpu(cpu)
    if os.geteuid() != 0:
        raise InputError(
            "emulated:arm64 needs root (chroot, and binfmt_misc to register qemu-aarch64): "
            f"{INSTALL_HINT}"
        )
    qemu = _qemu()
    if cpu not in _qemu_cpus(qemu):
        known = ", ".join(sorted(_qemu_cpus(qemu)))
        raise InputError(f"this qemu-aarch64-static does not emulate {cpu}; it knows: {known}")
    interpreter = register_binfmt(qemu)
    root = emulated_root()
    root.parent.mkdir(parents=True, exist_ok=True)
    lock = filelock.FileLock(str(root.parent / "arm64-root.lock"), timeout=_BUILD_TIMEOUT_S)
    _acquire(lock, log)
    try:
        if not arm64_root.is_built(root):
            log(f"emulated:arm64: building the arm64 root in {root} (once, about a minute)")
            arm64_root.build(root, log)
        arm64_root.refresh_code(root, log)
        if interpreter is not None:
            _copy_interpreter(qemu, root, interpreter)
    finally:
        lock.release()
    env = ["PATH=/usr/local/bin:/usr/bin:/bin", "HOME=/root", "LANG=C.UTF-8", f"QEMU_CPU={cpu}"]
    return ["chroot", str(root), "/usr/bin/env", "-i", *env]


def _acquire(lock: filelock.BaseFileLock, log: Log) -> None:
    """Take the build lock, saying so when another process holds it (a build: a minute)."""
    try:
        lock.acquire(timeout=0)
    except filelock.Timeout:
        log(f"emulated:arm64: waiting for another cr-edge that holds {lock.lock_file}")
        try:
            lock.acquire()
        except filelock.Timeout as e:
            raise InputError(
                f"another cr-edge has held {lock.lock_file} for {_BUILD_TIMEOUT_S:.0f} s while "
                "building the arm64 root: wait for it, or remove the lock if no cr-edge runs"
            ) from e


def check_cpu(cpu: str) -> None:
    """Refuse a CPU model name qemu-aarch64 does not have, naming those it might."""
    if cpu not in KNOWN_CPUS:
        raise InputError(f"unknown ARM64 CPU model {cpu!r}: use one of {', '.join(KNOWN_CPUS)}")


def register_binfmt(qemu: str) -> str | None:
    """Make the kernel run aarch64 ELF files with qemu; mounts binfmt_misc if needed.

    Returns None when the registration has flag F (the interpreter is opened at
    registration, so the root needs no copy of it), else the interpreter's path, which
    must then exist inside the root.
    """
    if not (BINFMT_DIR / "register").exists():
        _run(["mount", "-t", "binfmt_misc", "binfmt_misc", str(BINFMT_DIR)], "mount binfmt_misc")
    for entry in _aarch64_entries():
        if entry.get("enabled"):
            return None if "F" in entry.get("flags", "") else entry.get("interpreter")
    ours = BINFMT_DIR / BINFMT_NAME
    if ours.exists():  # ours, but disabled: remove it, then register it afresh
        ours.write_text("-1")
    rule = f":{BINFMT_NAME}:M:0:{_escaped(_MAGIC)}:{_escaped(_MASK)}:{qemu}:F"
    try:
        (BINFMT_DIR / "register").write_text(rule)
    except OSError as e:
        raise InputError(
            f"cannot register qemu-aarch64 with binfmt_misc ({e}): {INSTALL_HINT}"
        ) from e
    return None


def _aarch64_entries() -> list[dict]:
    """The binfmt_misc entries whose magic matches an aarch64 ELF file."""
    entries = []
    for path in sorted(BINFMT_DIR.iterdir()):
        if path.name in ("register", "status"):
            continue
        try:
            lines = path.read_text().splitlines()
        except OSError:
            continue
        entry: dict = {"name": path.name, "enabled": bool(lines) and lines[0] == "enabled"}
        for line in lines[1:]:
            key, _, value = line.partition(" ")
            entry[key.rstrip(":")] = value.strip()
        if entry.get("magic", "").startswith(_MAGIC[:38]):
            entries.append(entry)
    return entries


def _copy_interpreter(qemu: str, root: Path, interpreter: str) -> None:
    """A registration without flag F: the kernel opens its interpreter inside the chroot."""
    target = root / interpreter.lstrip("/")
    if target.is_file():
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.is_symlink():
        target.unlink()
    shutil.copy2(os.path.realpath(qemu), target)


def _qemu() -> str:
    found = shutil.which("qemu-aarch64-static") or (
        "/usr/bin/qemu-aarch64-static" if Path("/usr/bin/qemu-aarch64-static").is_file() else None
    )
    if found is None:
        raise InputError(f"emulated:arm64 needs qemu-aarch64-static: {INSTALL_HINT}")
    return found


@functools.lru_cache(maxsize=4)
def _qemu_cpus(qemu: str) -> frozenset[str]:
    """The CPU models this qemu emulates, from ``qemu-aarch64-static -cpu help``."""
    done = subprocess.run([qemu, "-cpu", "help"], capture_output=True, text=True, check=False)
    names = [line.split()[0] for line in done.stdout.splitlines()[1:] if line.strip()]
    return frozenset(names)


def _escaped(hex_digits: str) -> str:
    return "".join("\\x" + hex_digits[i : i + 2] for i in range(0, len(hex_digits), 2))


def _run(argv: list[str], what: str) -> None:
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        raise InputError(f"emulated:arm64: {what} failed: {tail[0]}; {INSTALL_HINT}")


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)
