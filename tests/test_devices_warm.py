"""The device's warm server (``cr_edge.devices.warm``) over a real loopback sshd.

The second command on a device is served by a process that has cr-edge imported; a
server that was killed, a socket left by a reboot, or a server of other code never
makes a command fail or hang: it runs cold, as if there were no server. The server
leaves after its idle time. Real sshd, real processes; each test ends its server.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import device_fixtures as fx
import pytest

from cr_edge.devices import launch, registry, remote
from cr_edge.devices.registry import Device
from cr_edge.devices.warm import WARM_LOG, WARM_SERVER_LOCK, WARM_SOCKET

device_home, sshd = fx.device_home, fx.sshd
HOSTILE = "w a'b\"c$(touch {marker});d`touch {marker}`"


def _server_pid(workdir: Path, seconds: float = 60.0, other_than: int | None = None) -> int:
    """The pid of the server listening in ``workdir``, once its socket is up."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, ValueError):
            pid = int((workdir / WARM_SERVER_LOCK).read_text())
            if pid != other_than and _alive(pid) and _listening(workdir / WARM_SOCKET):
                return pid
        time.sleep(0.1)
    raise AssertionError(f"no warm server came up in {workdir}")


def _listening(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX) as s:
        try:
            s.connect(str(path))
        except OSError:
            return False
    return True


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with contextlib.suppress(OSError):  # a zombie is not alive
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    return True


def _end(workdir: Path) -> None:
    with contextlib.suppress(OSError, ValueError):
        os.kill(int((workdir / WARM_SERVER_LOCK).read_text()), signal.SIGKILL)


@pytest.fixture
def warm_box(sshd: fx.SshServer, device_home: Path, tmp_path: Path) -> Iterator[Device]:
    """``warm``: the loopback sshd as a device that keeps a server up for 60 s."""
    device = sshd.device("warm", tmp_path / "warm work", keep_warm=60)
    registry.add(device)
    yield device
    _end(tmp_path / "warm work")


def _validate(device: Device, model: Path) -> remote.DeviceRun:
    files, paths = launch.layout([model], "validate")
    return remote.run_command(device, "validate", files, [*paths, "--runtime", "cpu"])


@pytest.mark.slow
def test_the_second_command_is_served_warm(
    cli_run, warm_box: Device, exported: Path, tmp_path: Path
) -> None:
    """A cold first run starts the server; the second is served by it, with a folder whose
    name has quotes, $() and backquotes, and gives the same verdict; the socket is private."""
    marker = tmp_path / "marker"
    folder = tmp_path / HOSTILE.format(marker=marker)
    folder.mkdir(parents=True)
    for name in ("model.onnx", "model.ref.npz", "manifest.json"):
        if (exported / name).exists():
            (folder / name).write_bytes((exported / name).read_bytes())
    out = tmp_path / "report.json"
    workdir = tmp_path / "warm work"
    reports = []
    for run in (1, 2):
        result = cli_run(
            "validate", folder / "model.onnx", "--runtime", "cpu", "--on", "warm", "--json", out
        )
        assert result.exit_code == 0, result.output
        reports.append(json.loads(out.read_text()))
        if run == 1:
            _server_pid(workdir)
    first, second = (r["devices"]["warm"] for r in reports)
    assert first["warm"] is False and second["warm"] is True
    assert second["pushed"] == []
    rows = [{r["runtime"]: r for r in doc["results"]}["cpu@warm"] for doc in reports]
    assert rows[0]["outputs"] == rows[1]["outputs"]  # the same validation, warm or cold
    assert rows[1]["artifact"] == str(folder / "model.onnx")
    assert (workdir / WARM_SOCKET).stat().st_mode & 0o777 == 0o600
    assert workdir.stat().st_mode & 0o777 == 0o700
    assert not marker.exists()


@pytest.mark.slow
def test_a_killed_server_and_its_stale_socket_fall_back_to_a_cold_run(
    warm_box: Device, exported: Path, tmp_path: Path
) -> None:
    """SIGKILL leaves the socket behind (as a reboot leaves one on a kept disk): the next
    command finds nobody listening there, runs cold at once and passes, and a new server
    takes over."""
    workdir = tmp_path / "warm work"
    assert not _validate(warm_box, exported / "model.onnx").warm
    pid = _server_pid(workdir)
    os.kill(pid, signal.SIGKILL)
    # the kernel releases a dead process's socket a moment after the process is a zombie
    # (up to a second here under load): wait for both
    deadline = time.monotonic() + 10
    while (_alive(pid) or _listening(workdir / WARM_SOCKET)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert (workdir / WARM_SOCKET).exists() and not _listening(workdir / WARM_SOCKET)
    start = time.monotonic()
    run = _validate(warm_box, exported / "model.onnx")
    assert not run.warm and time.monotonic() - start < 60
    assert {r["runtime"] for r in run.report["results"]} >= {"cpu"}
    new = _server_pid(workdir, other_than=pid)
    assert _validate(warm_box, exported / "model.onnx").warm
    assert int((workdir / WARM_SERVER_LOCK).read_text()) == new


@pytest.mark.slow
def test_the_server_leaves_after_its_idle_time(
    sshd: fx.SshServer, device_home: Path, exported: Path, tmp_path: Path
) -> None:
    workdir = tmp_path / "idle"
    device = sshd.device("idle", workdir, keep_warm=2)
    try:
        assert not _validate(device, exported / "model.onnx").warm
        pid = _server_pid(workdir)
        deadline = time.monotonic() + 30
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _alive(pid)
        assert not (workdir / WARM_SOCKET).exists()  # it removes its socket as it leaves
        assert f"server {pid} left: idle for 2 s" in (workdir / WARM_LOG).read_text()
    finally:
        _end(workdir)


@pytest.mark.slow
def test_a_stopped_server_is_not_waited_for(
    warm_box: Device, exported: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server that takes no command (SIGSTOP: hung) costs the ack wait, then a cold run."""
    workdir = tmp_path / "warm work"
    _validate(warm_box, exported / "model.onnx")
    pid = _server_pid(workdir)
    monkeypatch.setattr(remote, "WARM_ACK", 1.0)
    os.kill(pid, signal.SIGSTOP)
    try:
        run = _validate(warm_box, exported / "model.onnx")
        assert not run.warm and run.report["results"]
    finally:
        os.kill(pid, signal.SIGCONT)


@pytest.mark.slow
def test_ctrl_c_on_the_host_ends_the_warm_command(
    warm_box: Device, exported: Path, tmp_path: Path
) -> None:
    """The host's ssh killed mid-command (what Ctrl-C does): the device's agent sees its
    reader gone, the server's child ends the command and removes its run folder."""
    import threading

    from cr_edge.devices import transport

    workdir = tmp_path / "warm work"
    _validate(warm_box, exported / "model.onnx")
    server = _server_pid(workdir)
    files, paths = launch.layout([exported / "model.onnx"], "profile")
    argv = [*paths, "--runtime", "cpu", "--batch", "1", "--seconds", "60", "--no-memory"]
    errors: list[BaseException] = []

    def profile() -> None:
        try:
            remote.run_command(warm_box, "profile", files, argv)
        except BaseException as e:
            errors.append(e)

    thread = threading.Thread(target=profile, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not list((workdir / "runs").iterdir()) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert list((workdir / "runs").iterdir()), "the profile never started on the device"
    time.sleep(1.0)
    for proc in list(transport._LIVE):  # the host's ssh, as Ctrl-C's exit ends it
        transport._kill(proc)
    thread.join(30)
    assert errors  # the host's command failed, as an interrupted one does
    deadline = time.monotonic() + 20
    while list((workdir / "runs").iterdir()) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert list((workdir / "runs").iterdir()) == []  # the device's command ended, cleaned up
    assert _alive(server)  # the server itself stays for the next command
    assert _validate(warm_box, exported / "model.onnx").warm


KEY_SCRIPT = """
import importlib.util, json, os, sys
folder, names, package = sys.argv[1], sys.argv[2].split(","), sys.argv[3]
ns = {"__name__": "cr_edge_agent", "SOURCES": {}}
for name in names:
    ns["SOURCES"][name] = open(os.path.join(folder, name)).read()
for name in names:
    exec(compile(ns["SOURCES"][name], name, "exec"), ns)
before = ns["warm_key"]()
os.makedirs(importlib.util.find_spec(package).submodule_search_locations[0] + "/__pycache__")
print(json.dumps([before, ns["warm_key"]()]))
"""


def test_the_key_ignores_what_importing_writes_into_a_package(tmp_path: Path) -> None:
    """A server computes its key, then imports cr-edge: on a checkout nobody has imported
    from with bytecode on (a clean CI checkout whose host runs with
    PYTHONDONTWRITEBYTECODE), that import makes ``cr_edge/__pycache__``. The key must not
    change with it, or every next command finds "another key", stops the server and runs
    cold. Shown on a package the key names, made in tmp and first on the path (the real
    ones are shared with the other tests)."""
    fake = tmp_path / "site" / "onnx"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("")
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "site")}
    argv = [str(Path(remote.__file__).parent), ",".join(remote.DEVICE_SIDE), "onnx"]
    done = subprocess.run(
        [sys.executable, "-c", KEY_SCRIPT, *argv], env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    before, after = json.loads(done.stdout)
    assert (fake / "__pycache__").is_dir()
    assert before == after
