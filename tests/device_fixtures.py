"""Devices for the device tests: a real OpenSSH server on 127.0.0.1, and exec devices.

``sshd`` starts Debian's ``/usr/sbin/sshd`` on a free loopback port with a throwaway host
key and user key (``ssh-keygen``), its own ``sshd_config`` and a known_hosts file that
holds the throwaway host key; the client reaches it through an ssh_config file
(``ssh -F``) stored with the device, so host-key checking stays on. The device's Python
is this test process's (it has cr-edge installed), so no ``device setup`` is needed.
Without sshd the ssh tests skip, except under CI, where they fail: CI installs it.

Test modules import the fixtures they use by name from here.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from cr_edge.devices import registry
from cr_edge.devices.registry import Device

SSHD = "/usr/sbin/sshd"


@dataclass(frozen=True)
class SshServer:
    port: int
    user: str
    folder: Path
    client_config: Path  # ssh -F: the user key, the known_hosts with the throwaway host key

    def url(self, workdir: Path | str = "") -> str:
        from urllib.parse import quote

        path = quote(str(workdir)) if workdir else ""
        return f"ssh://{self.user}@127.0.0.1:{self.port}{path}"

    def device(self, name: str, workdir: Path, **settings: object) -> Device:
        fields = {
            "python": sys.executable,
            "ssh_config": str(self.client_config),
            "keep_warm": 0,  # no server left behind by a test; test_devices_warm turns it on
            **settings,
        }
        return Device(name, self.url(workdir), **fields)  # type: ignore[arg-type]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _keygen(path: Path) -> None:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "cr-edge-test", "-f", str(path)],
        check=True,
        capture_output=True,
    )


def _wait_for_banner(port: int, proc: subprocess.Popen, seconds: float = 20.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"sshd exited: {proc.stderr.read().decode(errors='replace')}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                if s.recv(64).startswith(b"SSH-"):
                    return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("sshd did not answer on its port")


@pytest.fixture(scope="session")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshServer]:
    """A real sshd on 127.0.0.1 with throwaway keys; stopped (and its masters closed) at the end."""
    if not sshd_available():
        reason = (
            "OpenSSH server/client not installed (apt-get install openssh-server openssh-client)"
        )
        if os.environ.get("CI"):
            pytest.fail(f"{reason}; CI must install it (.ci/run)")
        pytest.skip(reason)
    with loopback_sshd(tmp_path_factory.mktemp("sshd")) as server:
        yield server


def sshd_available() -> bool:
    return bool(os.path.exists(SSHD) and shutil.which("ssh") and shutil.which("ssh-keygen"))


@contextlib.contextmanager
def loopback_sshd(folder: Path) -> Iterator[SshServer]:
    """Start sshd on a free 127.0.0.1 port with keys made in ``folder``; stop it on exit.

    Plain (no pytest), so ``bench/device_overhead.py`` starts the same server."""
    _keygen(folder / "host_key")
    _keygen(folder / "user_key")
    shutil.copy(folder / "user_key.pub", folder / "authorized_keys")
    port = free_port()
    user = subprocess.run(["id", "-un"], capture_output=True, text=True, check=True).stdout.strip()
    (folder / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {folder}/host_key\n"
        f"PidFile {folder}/sshd.pid\nAuthorizedKeysFile {folder}/authorized_keys\n"
        "StrictModes no\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n"
        "PubkeyAuthentication yes\nPermitRootLogin prohibit-password\nUsePAM no\n"
        "LogLevel ERROR\nMaxSessions 50\nMaxStartups 50\n"
    )
    host_key = (folder / "host_key.pub").read_text().split()
    (folder / "known_hosts").write_text(f"[127.0.0.1]:{port} {host_key[0]} {host_key[1]}\n")
    config = folder / "ssh_config"
    config.write_text(
        f"Host *\n  IdentityFile {folder}/user_key\n  IdentitiesOnly yes\n"
        f"  UserKnownHostsFile {folder}/known_hosts\n  GlobalKnownHostsFile /dev/null\n"
        "  StrictHostKeyChecking yes\n  LogLevel ERROR\n"
    )
    if os.geteuid() == 0:
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # sshd's privilege-separation dir
    proc = subprocess.Popen(
        [SSHD, "-D", "-e", "-f", str(folder / "sshd_config")],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    server = SshServer(port, user, folder, config)
    try:
        _wait_for_banner(port, proc)
        yield server
    finally:
        _close_masters(server)
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _close_masters(server: SshServer) -> None:
    from cr_edge.devices.remote import open_transport

    open_transport(server.device("x", Path("/tmp"))).close()


@pytest.fixture
def device_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private ``$XDG_CONFIG_HOME``, so the tests' devices never touch the user's list."""
    home = tmp_path / "config"
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home))
    return home


@pytest.fixture
def exec_device(device_home: Path, tmp_path: Path) -> Device:
    """``here``: an exec device (prefix ``env``) that runs this Python, its workdir in tmp."""
    device = Device(
        "here", "exec:env", python=sys.executable, workdir=str(tmp_path / "work"), keep_warm=0
    )
    registry.add(device)
    return device


@pytest.fixture
def ssh_device(sshd: SshServer, device_home: Path, tmp_path: Path) -> Device:
    """``box``: the loopback sshd as a device, its workdir in tmp."""
    device = sshd.device("box", tmp_path / "box work")
    registry.add(device)
    return device


# --- the emulated ARM64 device: one root per test run, shared by the xdist workers --------

EMULATED_TOOLS = ("qemu-aarch64-static", "debootstrap", "dpkg", "chroot")
CI_ROOT_PREFIX = "cr-edge-ci-root-"


def emulated_missing() -> str | None:
    """What this machine lacks to run the emulated ARM64 device, or None."""
    if os.geteuid() != 0:
        return "not root (chroot and binfmt_misc need root)"
    for tool in EMULATED_TOOLS:
        if not (shutil.which(tool) or Path("/usr/sbin", tool).is_file()):
            return f"{tool} not installed (apt-get install qemu-user-static debootstrap)"
    return None


def _run_owner(pid: int | None = None) -> str:
    """The process that runs the whole session (xdist's controller for a worker): its pid
    and start time, so a later session that reuses the pid never takes this one's root."""
    if pid is None:
        pid = os.getppid() if os.environ.get("PYTEST_XDIST_WORKER") else os.getpid()
    try:
        started = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        started = "0"
    return f"{pid}-{started}"


@pytest.fixture(scope="session")
def emulated_arm64() -> Iterator[Path]:
    """The emulated ARM64 root, built (or its code refreshed) once per test run.

    Every test that runs on the emulated device takes this fixture, so the suite pays
    for the root once, and under ``pytest -n 2`` once for both workers: under CI the root
    lives in a scratch ``XDG_CACHE_HOME`` named by the session's controller (the same
    folder for both workers), and ``emulated_prefix`` builds it under a file lock, so a
    second worker waits for the first's build instead of making its own. CI's root is of
    this run only (never state left on the machine; pip's download cache stays) and is
    removed when the session ends (``remove_ci_roots``). Elsewhere it is the user's
    cached root. Skips without root or the tools, and fails under CI, which has them."""
    missing = emulated_missing()
    if missing:
        if os.environ.get("CI"):
            pytest.fail(f"emulated ARM64 device under CI: {missing}")
        pytest.skip(f"emulated ARM64 device: {missing}")
    from cr_edge.devices.emulated import DEFAULT_CPU, emulated_prefix, emulated_root

    with pytest.MonkeyPatch.context() as mp:
        if os.environ.get("CI"):
            scratch = Path(tempfile.gettempdir()) / f"{CI_ROOT_PREFIX}{_run_owner()}"
            scratch.mkdir(exist_ok=True)
            cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
            mp.setenv("PIP_CACHE_DIR", os.environ.get("PIP_CACHE_DIR", f"{cache}/pip"))
            mp.setenv("XDG_CACHE_HOME", str(scratch))
        started = time.monotonic()
        emulated_prefix(DEFAULT_CPU)
        print(f"emulated ARM64 device ready in {time.monotonic() - started:.0f} s")
        yield emulated_root()


def remove_ci_roots() -> None:
    """At the end of the session's controller: remove the CI roots its workers built
    (half a gigabyte of small files, removed in the background)."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        return  # the other worker may still use it
    scratch = Path(tempfile.gettempdir()) / f"{CI_ROOT_PREFIX}{_run_owner(os.getpid())}"
    if scratch.is_dir():
        subprocess.Popen(["rm", "-rf", str(scratch)], start_new_session=True)
