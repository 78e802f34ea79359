"""Build the Debian arm64 root that the emulated ARM64 device runs in.

The root is what a phone-class Linux box with Python would hold: Debian bookworm's
arm64 ``python3`` (3.11) and aarch64 wheels of cr-edge's runtime-only core (never
torch), with this checkout's ``cr_edge`` package on top. It is made without running
any emulated code, so it takes about a minute instead of the half hour of an
emulated debootstrap second stage:

1. ``debootstrap --foreign`` downloads and verifies the arm64 packages;
2. ``dpkg -x`` unpacks each downloaded ``.deb`` on the host (no maintainer scripts:
   a minimal root does not need them to run ``python3``);
3. ``pip install --platform ..._aarch64 --target`` fetches the aarch64 wheels of the
   host's own core versions (so host and device differ by ISA, not by release);
4. a venv by hand (``pyvenv.cfg`` and a ``bin/python`` symlink), so that the
   device's Python has one fixed path.

The root is built under a temporary name and renamed when complete, with a stamp
that records its recipe, so a half-built or stale root is never used. Refreshing the
``cr_edge`` package (``refresh_code``) is separate and cheap: it runs when the host's
package files change.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import cr_edge
from cr_edge.errors import InputError

SUITE = "bookworm"  # Debian 12: python3 is 3.11, glibc 2.36
MIRROR = "http://deb.debian.org/debian"
PYTHON_VERSION = "3.11"
# manylinux_2_28 covers the newest numpy/onnxruntime wheels; 2014 (2_17) the older ones.
PLATFORMS = ("manylinux_2_28_aarch64", "manylinux2014_aarch64")
# The core dependencies of pyproject.toml (tomli is only for Python < 3.11); a test
# keeps this list equal to pyproject's.
CORE_PACKAGES = (
    "numpy",
    "onnx",
    "onnxruntime",
    "click",
    "rich",
    "onnx-ir",
    "filelock",
    "ml_dtypes",
)
RECIPE_VERSION = 1  # bump when the way the root is made changes

OPT = "opt/cr-edge"  # everything cr-edge adds to the root lives under /opt/cr-edge
VENV = f"{OPT}/venv"
SITE = f"{VENV}/lib/python{PYTHON_VERSION}/site-packages"
WORK = f"{OPT}/work"
STAMP = f"{OPT}/built.json"
CODE_DIGEST = f"{OPT}/cr_edge.digest"

Log = Callable[[str], None]


def core_pins() -> list[str]:
    """``name==version`` of the host's installed core packages (plain names where absent)."""
    pins = []
    for name in CORE_PACKAGES:
        try:
            pins.append(f"{name}=={importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            pins.append(name)
    return pins


def recipe() -> dict:
    """What the root is made of; a root whose stamp differs is rebuilt."""
    return {"recipe": RECIPE_VERSION, "suite": SUITE, "python": PYTHON_VERSION, "pins": core_pins()}


def is_built(root: Path) -> bool:
    """True when ``root`` was completed by ``build`` from the current recipe."""
    try:
        return json.loads((root / STAMP).read_text()) == recipe()
    except (OSError, ValueError):
        return False


def build(root: Path, log: Log) -> None:
    """Make a complete root at ``root`` (replacing any stale one); about a minute."""
    partial = root.with_name(root.name + ".building")
    _remove_tree(partial)
    partial.mkdir(parents=True)
    started = time.monotonic()
    wheels = _start_wheels(partial)  # both are mostly downloads: fetch them side by side
    try:
        _step(log, "debootstrap --foreign (download arm64 python3)", _debootstrap, partial)
        _step(log, "unpack the .debs with dpkg -x", _unpack_debs, partial)
        _finish_wheels(wheels, partial)
        log(
            f"arm64 root: aarch64 wheels of the core ({', '.join(CORE_PACKAGES)}), "
            f"alongside: {time.monotonic() - started:.0f} s"
        )
    finally:
        if wheels.poll() is None:
            wheels.kill()
            wheels.wait()
    _make_venv(partial)
    (partial / WORK).mkdir(parents=True, exist_ok=True)
    (partial / WORK).chmod(0o700)
    (partial / STAMP).write_text(json.dumps(recipe()))
    _remove_tree(root)
    os.replace(partial, root)
    log(f"arm64 root built in {time.monotonic() - started:.0f} s: {root}")


def code_digest(package: Path) -> str:
    """sha256 over the relative paths and bytes of the package's files (caches excluded)."""
    h = hashlib.sha256()
    for path in sorted(_package_files(package)):
        h.update(str(path.relative_to(package)).encode() + b"\0")
        h.update(path.read_bytes() + b"\0")
    return h.hexdigest()


def refresh_code(root: Path, log: Log) -> None:
    """Put this process's ``cr_edge`` package (and the zoo recipes) into the root's venv.

    Cheap and idempotent: nothing is copied while the digest of the host's package
    matches the one recorded in the root. The new copy is assembled beside the old one
    and swapped in by rename, so a kill leaves either the old or the new package.
    """
    package = Path(cr_edge.__file__).resolve().parent
    digest = code_digest(package)
    stamp = root / CODE_DIGEST
    if stamp.is_file() and stamp.read_text() == digest:
        return
    site = root / SITE
    fresh, old = site / ".cr_edge.new", site / ".cr_edge.old"
    _remove_tree(fresh)
    _remove_tree(old)
    for path in _package_files(package):
        target = fresh / path.relative_to(package)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)
    zoo = package.parent / "models"  # a checkout keeps the zoo beside the package
    if zoo.is_dir() and not (fresh / "models").exists():
        shutil.copytree(zoo, fresh / "models", ignore=shutil.ignore_patterns("__pycache__"))
    if (site / "cr_edge").exists():
        os.replace(site / "cr_edge", old)
    os.replace(fresh, site / "cr_edge")
    _remove_tree(old)
    stamp.write_text(digest)
    log(f"arm64 root: cr_edge code refreshed from {package} ({digest[:12]})")


def _package_files(package: Path) -> list[Path]:
    return [
        p
        for p in package.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and p.suffix not in (".pyc", ".pyo")
    ]


def _step(log: Log, what: str, fn: Callable[[Path], None], root: Path) -> None:
    started = time.monotonic()
    fn(root)
    log(f"arm64 root: {what}: {time.monotonic() - started:.0f} s")


def _debootstrap(root: Path) -> None:
    _run(
        [
            _tool("debootstrap"),
            "--foreign",
            "--arch=arm64",
            "--variant=minbase",
            "--include=python3",
            SUITE,
            str(root),
            MIRROR,
        ],
        "debootstrap",
    )


def _unpack_debs(root: Path) -> None:
    debs = sorted((root / "var/cache/apt/archives").glob("*.deb"))
    if not debs:
        raise InputError(f"debootstrap left no .deb files in {root}/var/cache/apt/archives")
    dpkg = _tool("dpkg")
    for deb in debs:
        _run([dpkg, "-x", str(deb), str(root)], f"dpkg -x {deb.name}")
    for deb in debs:  # the root's python3 is unpacked; the archives are 60 MB of no use
        deb.unlink()
    if not (root / "usr/bin/python3").exists():
        raise InputError(f"the arm64 root {root} has no usr/bin/python3 after unpacking")


def _pip_argv(root: Path, packages: list[str]) -> list[str]:
    platforms = [arg for p in PLATFORMS for arg in ("--platform", p)]
    argv = [sys.executable, "-m", "pip", "install", "--quiet", "--no-input"]
    argv += ["--disable-pip-version-check", *platforms, "--python-version", PYTHON_VERSION]
    argv += ["--implementation", "cp", "--abi", "cp" + PYTHON_VERSION.replace(".", "")]
    return [*argv, "--only-binary=:all:", "--target", str(root / SITE), *packages]


def _start_wheels(root: Path) -> subprocess.Popen:
    """pip for the host's core versions, so that host and device differ only by ISA."""
    (root / SITE).mkdir(parents=True)
    return subprocess.Popen(
        _pip_argv(root, core_pins()),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _finish_wheels(pip: subprocess.Popen, root: Path) -> None:
    pip.communicate()  # pip prints only on failure, and then the unpinned retry speaks
    if pip.returncode != 0:  # a host version without an aarch64 wheel: the newest with one
        shutil.rmtree(root / SITE)
        (root / SITE).mkdir(parents=True)
        _run(_pip_argv(root, list(CORE_PACKAGES)), "pip install (aarch64 wheels)")


def _make_venv(root: Path) -> None:
    """A venv without running the device's Python: what ``python -m venv`` would write."""
    venv = root / VENV
    (venv / "bin").mkdir(parents=True, exist_ok=True)
    version = next((root / "usr/bin").glob(f"python{PYTHON_VERSION}"), None)
    if version is None:
        raise InputError(f"the arm64 root {root} has no usr/bin/python{PYTHON_VERSION}")
    (venv / "pyvenv.cfg").write_text(
        f"home = /usr/bin\ninclude-system-site-packages = false\nversion = {PYTHON_VERSION}\n"
    )
    for name in ("python", "python3"):
        link = venv / "bin" / name
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(f"/usr/bin/python{PYTHON_VERSION}")


def _tool(name: str) -> str:
    found = shutil.which(name) or next(
        (str(p) for d in ("/usr/sbin", "/sbin", "/usr/bin") if (p := Path(d, name)).is_file()),
        None,
    )
    if found is None:
        raise InputError(
            f"emulated:arm64 needs {name}: apt-get install qemu-user-static debootstrap (as root)"
        )
    return found


def _run(argv: list[str], what: str) -> None:
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        raise InputError(f"building the arm64 root: {what} failed ({done.returncode}): {tail[0]}")


def _remove_tree(path: Path) -> None:
    """Delete a root or a scratch folder; never one with a filesystem mounted inside."""
    mounted = [d for d in ("proc", "sys", "dev", "dev/pts") if os.path.ismount(path / d)]
    if mounted:
        raise InputError(f"{path}/{mounted[0]} is mounted: umount it before the root is rebuilt")
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.exists():
        shutil.rmtree(path)
