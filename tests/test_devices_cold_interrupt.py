"""Ctrl-C or kill -9 of the host ends a cold command on the device (RELIABILITY rows 23, 27).

ssh without a tty forwards no signal: without the agent's watch (``agent.watch_host``)
the device's ``cr-edge profile`` ran on for its whole ``--seconds`` after the host was
gone. Here the host is a real ``cr-edge profile --on`` process, the device the real
loopback sshd (``device_fixtures``) with ``keep_warm`` 0 (cold: a new Python per
command), and the device side is read where it lives, on this same machine: ``/proc``
(every process whose working folder is in the device's workdir: the agent, the command
and what it started) and the workdir (``runs/`` and ``tmp/``, the lock). The same watch ends a warm command
when the host is killed outright; on an exec device, whose host kills the agent itself,
the command dies with its agent and the next exclusive run removes the agent's folders.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import device_fixtures as fx
import pytest
from terminal_signals import from_a_terminal

from cr_edge.devices.registry import Device

device_home, ssh_device, sshd = fx.device_home, fx.ssh_device, fx.sshd

SECONDS = 6.0  # the profile's length, here and then on the device: the device's runs on
GONE_S = 5.0  # the device's processes must be gone this soon after the host's signal
REPO = Path(__file__).resolve().parents[1]


def _processes(workdir: Path, server: int = 0) -> dict[int, str]:
    """Live processes (not zombies) working in ``workdir``, but for a warm ``server``:
    pid -> their working folder."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) in (os.getpid(), server):
            continue
        with contextlib.suppress(OSError, IndexError):
            cwd = os.readlink(entry / "cwd")
            inside = (cwd + "/").startswith(f"{workdir}/")
            if inside and (entry / "stat").read_text().rsplit(") ", 1)[1][0] != "Z":
                found[int(entry.name)] = cwd
    return found


def _host(model: Path, log: Path) -> subprocess.Popen:
    """``cr-edge profile MODEL --on box`` as a user starts it."""
    argv = ["profile", str(model), "--runtime", "cpu", "--batch", "1", "--warmup", "0"]
    argv += ["--seconds", str(SECONDS), "--no-memory", "--no-floor", "--on", "box"]
    return _start(["-m", "cr_edge.cli", *argv], log)


def _env() -> dict[str, str]:
    """This environment, with this checkout first on the path of a child Python."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    return env


def _start(args: list[str], log: Path) -> subprocess.Popen:
    """``python ARGS`` from this checkout, output into ``log``, in its own process group
    (a terminal's foreground job: Ctrl-C signals the group)."""
    with open(log, "wb") as out:
        return subprocess.Popen(
            [sys.executable, *args],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=_env(),
            preexec_fn=from_a_terminal,
            start_new_session=True,
        )


def _device_command(
    workdir: Path, host: subprocess.Popen, log: Path, server: int
) -> tuple[float, set[int]]:
    """Wait for the device's command (a process working in ``runs/``); when it started
    and the pids working in the workdir then (the agent and the command)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        found = _processes(workdir, server)
        if any(cwd.startswith(f"{workdir}/runs/") for cwd in found.values()):
            return time.monotonic(), set(found)
        assert host.poll() is None, log.read_text()
        time.sleep(0.05)
    raise AssertionError(f"the profile never started on the device: {log.read_text()}")


def _signal_until_gone(
    host: subprocess.Popen, workdir: Path, kill: signal.Signals, what: str, server: int = 0
) -> float:
    """Signal the host's process group (a terminal's Ctrl-C, or kill -9); seconds until
    nothing but the warm ``server`` works in ``workdir``, which must be within GONE_S
    (``what``: what is wrong if something is left)."""
    signalled = time.monotonic()
    os.killpg(host.pid, kill)
    assert host.wait(30) != 0
    while _processes(workdir, server) and time.monotonic() - signalled < GONE_S + 5:
        time.sleep(0.05)
    gone = time.monotonic() - signalled
    assert _processes(workdir, server) == {}, f"{what} after {gone:.1f} s"
    assert gone < GONE_S
    return gone


def _interrupt(
    workdir: Path, model: Path, log: Path, kill: signal.Signals, server: int = 0
) -> float:
    """Start the host, signal it 1 s into the device's command; seconds until the device
    has nothing left running in its workdir (but its warm ``server``). Asserts nothing
    half-written stays."""
    host = _host(model, log)
    try:
        started, pids = _device_command(workdir, host, log, server)
        time.sleep(1.0)
        assert pids <= set(_processes(workdir, server)), "the device's command ended by itself"
        gone = _signal_until_gone(host, workdir, kill, "still running on the device", server)
        # the profile alone runs SECONDS from its start: ended well before, it was killed
        assert time.monotonic() < started + SECONDS
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(host.pid, signal.SIGKILL)
        host.wait()
    assert list((workdir / "runs").iterdir()) == []  # no partial run folder
    assert list((workdir / "tmp").iterdir()) == []  # nor its temporary files
    with open(workdir / ".lock", "rb") as f:  # the workdir's lock is free again
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    return gone


@pytest.mark.slow
@pytest.mark.parametrize("kill", [signal.SIGINT, signal.SIGKILL], ids=["ctrl-c", "kill-9"])
def test_the_host_interrupted_ends_the_cold_command_on_the_device(
    ssh_device: Device, exported: Path, tmp_path: Path, kill: signal.Signals
) -> None:
    """Ctrl-C (SIGINT to the host's process group) and SIGKILL (no clean-up on the host
    at all: its ssh outlives it) both end the device's command within GONE_S seconds,
    its run folder and temporary files removed, the workdir's lock released."""
    assert ssh_device.keep_warm == 0  # the cold path: no warm server to end the command
    gone = _interrupt(tmp_path / "box work", exported / "model.onnx", tmp_path / "host.log", kill)
    print(f"{kill.name}: nothing left running on the device {gone:.2f} s after the signal")


@pytest.mark.slow
def test_a_host_gone_while_its_command_waits_for_the_lock_runs_nothing(
    cli_run, ssh_device: Device, exported: Path, tmp_path: Path
) -> None:
    """A command queued behind another one on the device (the workdir's lock) whose host
    is killed leaves at once, instead of waiting for the lock and then running for
    nobody."""
    workdir = tmp_path / "box work"
    log = tmp_path / "host.log"
    first = cli_run("validate", exported / "model.onnx", "--runtime", "cpu", "--on", "box")
    assert first.exit_code == 0, first.output  # the files are there: no push, one agent
    with open(workdir / ".lock", "wb") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another command is on the device
        argv = ["validate", str(exported / "model.onnx"), "--runtime", "cpu", "--on", "box"]
        host = _start(["-m", "cr_edge.cli", *argv], log)
        try:
            deadline = time.monotonic() + 60
            while not _processes(workdir) and time.monotonic() < deadline:
                assert host.poll() is None, log.read_text()
                time.sleep(0.05)
            assert _processes(workdir), f"the agent never reached the device: {log.read_text()}"
            time.sleep(1.0)
            _signal_until_gone(host, workdir, signal.SIGKILL, "the agent still waits for the lock")
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(host.pid, signal.SIGKILL)
            host.wait()
    assert list((workdir / "runs").iterdir()) == []  # it never started the command


@pytest.mark.slow
def test_kill_9_of_the_host_ends_a_warm_command_too(
    cli_run, sshd: fx.SshServer, device_home: Path, exported: Path, tmp_path: Path
) -> None:
    """The same watch serves the warm path (``warm._answer``): a host killed outright
    (no clean-up, its ssh outlives it) ends the command the warm server runs; the server
    stays for the next command."""
    from cr_edge.devices import registry
    from cr_edge.devices.warm import WARM_LOG, WARM_SERVER_LOCK, WARM_SOCKET

    workdir = tmp_path / "box work"
    registry.add(sshd.device("box", workdir, keep_warm=60))
    try:
        first = cli_run("validate", exported / "model.onnx", "--runtime", "cpu", "--on", "box")
        assert first.exit_code == 0, first.output  # cold, and starts the warm server
        deadline = time.monotonic() + 60
        while not (workdir / WARM_SOCKET).exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        server = int((workdir / WARM_SERVER_LOCK).read_text())
        gone = _interrupt(
            workdir, exported / "model.onnx", tmp_path / "host.log", signal.SIGKILL, server
        )
        print(f"warm SIGKILL: nothing left running on the device {gone:.2f} s after the signal")
        log = workdir / WARM_LOG
        left = log.read_text() if log.exists() else "no server left"
        assert _processes(workdir), left  # the server itself stays
    finally:
        with contextlib.suppress(OSError, ValueError):
            os.kill(int((workdir / WARM_SERVER_LOCK).read_text()), signal.SIGKILL)


HOST_SCRIPT = """
import sys
from pathlib import Path
from cr_edge.devices import launch, remote
from cr_edge.devices.registry import Device
device = Device("here", "exec:env", python=sys.executable, workdir=sys.argv[1], keep_warm=0)
files, paths = launch.layout([Path(sys.argv[2])], "profile")
argv = ["--runtime", "cpu", "--batch", "1", "--warmup", "0", "--seconds", sys.argv[3]]
remote.run_command(device, "profile", files, [*paths, *argv, "--no-memory", "--no-floor"])
"""


@pytest.mark.slow
def test_an_exec_device_whose_agent_is_killed_takes_its_command_along(
    exported: Path, tmp_path: Path
) -> None:
    """Ctrl-C on the host of an exec device (here ``exec:env``): the host's exit SIGKILLs
    the agent's process group (``transport._end_live``), so the agent cannot clean up;
    its command, in a group of its own, dies with it (a profile writing into the dead
    agent's pipe dies of SIGPIPE too: ``PR_SET_PDEATHSIG`` is tested on its own below),
    and the next exclusive command there (a profile) removes the folders the agent left."""
    workdir = tmp_path / "exec work"
    log = tmp_path / "host.log"
    args = [str(workdir), str(exported / "model.onnx")]
    host = _start(["-c", HOST_SCRIPT, *args, "60"], log)
    try:
        _, pids = _device_command(workdir, host, log, 0)
        time.sleep(1.0)
        assert pids <= set(_processes(workdir)), "the device's command ended by itself"
        _signal_until_gone(host, workdir, signal.SIGINT, "the command outlived its agent")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(host.pid, signal.SIGKILL)
        host.wait()
    assert list((workdir / "runs").iterdir())  # what an agent killed outright leaves
    done = subprocess.run(
        [sys.executable, "-c", HOST_SCRIPT, *args, "0.2"], env=_env(), capture_output=True
    )
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    assert list((workdir / "runs").iterdir()) == []
    assert list((workdir / "tmp").iterdir()) == []


AGENT_PARENT = """
import os, subprocess, sys, time
from cr_edge.devices import agent
me = os.getpid()
child = subprocess.Popen(
    ["sleep", "60"], start_new_session=True, preexec_fn=lambda: agent._die_with_parent(me)
)
print(child.pid, flush=True)
time.sleep(60)
"""


@pytest.mark.skipif(sys.platform != "linux", reason="PR_SET_PDEATHSIG is Linux's")
def test_a_cold_command_dies_with_its_agent(tmp_path: Path) -> None:
    """A command that writes nothing (so no SIGPIPE) in its own session, started as the
    agent starts the cold command: SIGKILL of the agent ends it (``_die_with_parent``)."""
    parent = subprocess.Popen(
        [sys.executable, "-c", AGENT_PARENT], stdout=subprocess.PIPE, env=_env(), text=True
    )
    assert parent.stdout is not None
    child = int(parent.stdout.readline())
    try:
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait()
        deadline = time.monotonic() + 5
        while _running(child) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _running(child)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signal.SIGKILL)
        parent.stdout.close()


def _running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1][0] != "Z"
    except OSError:
        return False
