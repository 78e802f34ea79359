"""The ssh transport against a real OpenSSH server on 127.0.0.1 (``device_fixtures.sshd``).

Reliability rows 23 (unreachable, refused key, unknown host key, timeout: one line,
exit 2, no report) and 26 (hostile path names reach the device intact, nothing runs
that the user did not name), and ``validate --on`` over ssh end to end.
"""

from __future__ import annotations

import json
import platform
import shutil
import socket
import threading
from pathlib import Path

import device_fixtures as fx
import pytest

from cr_edge.devices import registry
from cr_edge.devices.registry import Device
from cr_edge.devices.remote import open_transport

# the fixtures these tests use, by name (pytest finds them as module attributes)
device_home, ssh_device, sshd = fx.device_home, fx.ssh_device, fx.sshd

FRESH = ("ControlMaster=no", "ControlPath=none")  # its own connection, not the shared master
HOSTILE = "a b'c\"d$(touch {marker});e`touch {marker}`"


def test_check_over_ssh_names_this_machine(cli_run, ssh_device: Device) -> None:
    result = cli_run("device", "check", "box")
    assert result.exit_code == 0, result.output
    arch = next(line.split()[1] for line in result.output.splitlines() if line.startswith("arch"))
    assert arch == platform.machine().lower()
    workdir = next(
        line.split(None, 1)[1] for line in result.output.splitlines() if line.startswith("workdir")
    )
    assert Path(workdir).stat().st_mode & 0o777 == 0o700  # row 27: the workdir is private


def test_argv_reaches_the_device_intact(ssh_device: Device, tmp_path: Path) -> None:
    """Row 26: every byte of every argument arrives; no command the user did not name runs."""
    marker = tmp_path / "marker"
    words = [
        HOSTILE.format(marker=marker),
        "; touch " + str(marker),
        "$HOME",
        "*",
        "'",
        '"',
        "\\",
        " ",
    ]
    transport = open_transport(ssh_device)
    code, out, _ = transport.run(
        ["python3", "-c", "import sys, json; print(json.dumps(sys.argv[1:]))", *words], timeout=30
    )
    assert code == 0
    assert json.loads(out) == words
    assert not marker.exists()


@pytest.mark.slow
def test_validate_on_ssh_with_a_hostile_folder_name(
    cli_run, ssh_device: Device, exported: Path, tmp_path: Path
) -> None:
    """Rows 26/27 end to end: a folder named with quotes, $() and ; validates on the device;
    the second run pushes nothing; the device's rows and fingerprint are in the report."""
    marker = tmp_path / "marker"
    folder = tmp_path / HOSTILE.format(marker=marker)
    shutil.copytree(exported, folder)
    out = tmp_path / "report.json"
    for run in (1, 2):
        result = cli_run(
            "validate", folder / "model.onnx", "--runtime", "cpu", "--on", "box", "--json", out
        )
        assert result.exit_code == 0, result.output
        report = json.loads(out.read_text())
        device = report["devices"]["box"]
        assert device["fingerprint"]["arch"] == platform.machine().lower()
        assert (device["pushed"] != []) if run == 1 else (device["pushed"] == [])
    rows = {r["runtime"]: r for r in report["results"]}
    assert set(rows) == {"cpu", "cpu@box"}
    assert rows["cpu@box"]["artifact"] == str(folder / "model.onnx")
    assert rows["cpu@box"]["outputs"]["status"] == "PASS"
    assert not marker.exists()
    assert not (tmp_path / "box work" / "agent.sock").exists()  # keep_warm 0: no server


def _fails_cleanly(
    cli_run, exported: Path, tmp_path: Path, name: str, words: tuple[str, ...]
) -> str:
    out = tmp_path / "report.json"
    result = cli_run(
        "validate", exported / "model.onnx", "--runtime", "cpu", "--on", name, "--json", out
    )
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: device "), result.output
    assert "Traceback" not in result.output
    assert any(w in lines[0] for w in words), lines[0]
    assert not out.exists()  # nothing half-done reported as a result
    return lines[0]


def test_unreachable_host_is_one_line(
    cli_run, sshd, device_home, exported: Path, tmp_path: Path
) -> None:
    port = fx.free_port()  # nothing listens there
    registry.add(Device("gone", f"ssh://127.0.0.1:{port}", ssh_config=str(sshd.client_config)))
    _fails_cleanly(cli_run, exported, tmp_path, "gone", ("Connection refused", "reach"))


def test_refused_key_is_one_line(
    cli_run, sshd, device_home, exported: Path, tmp_path: Path
) -> None:
    other = tmp_path / "other_key"
    import subprocess

    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    config = tmp_path / "ssh_config"
    config.write_text(sshd.client_config.read_text().replace(f"{sshd.folder}/user_key", str(other)))
    registry.add(
        Device("nokey", sshd.url(tmp_path / "w"), ssh_config=str(config), ssh_options=FRESH)
    )
    _fails_cleanly(cli_run, exported, tmp_path, "nokey", ("refused the key",))


def test_unknown_host_key_is_refused(
    cli_run, sshd, device_home, exported: Path, tmp_path: Path
) -> None:
    """Host-key checking stays on: a server not in known_hosts is never trusted."""
    config = tmp_path / "ssh_config"
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    config.write_text(
        sshd.client_config.read_text().replace(f"{sshd.folder}/known_hosts", str(empty))
    )
    registry.add(
        Device("stranger", sshd.url(tmp_path / "w"), ssh_config=str(config), ssh_options=FRESH)
    )
    _fails_cleanly(cli_run, exported, tmp_path, "stranger", ("host key",))


def test_silent_host_times_out_in_one_line(
    cli_run, sshd, device_home, exported: Path, tmp_path: Path
) -> None:
    """A host that accepts the connection and never speaks: an error after the timeout."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        port = listener.getsockname()[1]
        registry.add(
            Device("mute", f"ssh://127.0.0.1:{port}", ssh_config=str(sshd.client_config), timeout=2)
        )
        _fails_cleanly(cli_run, exported, tmp_path, "mute", ("timed out", "no answer", "timeout"))
    finally:
        stop.set()
        thread.join()
        for s in held:
            s.close()
        listener.close()


@pytest.mark.slow
def test_setup_installs_the_torch_free_core_once(
    cli_run, sshd, device_home, exported: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Row 24 and ``device setup``: a device without cr-edge says what to run; setup makes a
    venv there from wheels the host downloaded (no torch), once; then validate runs there.

    The wheels of the first setup are kept for the second: other work on this source tree
    between the two would rightly change cr-edge's own wheel, and reinstall it."""
    from cr_edge.devices import setup

    kept = tmp_path / "wheels"
    download = setup.download_wheels

    def once(info: dict, folder: Path, label: str) -> list[Path]:
        if not kept.is_dir():
            kept.mkdir()
            for wheel in download(info, folder, label):
                shutil.copy(wheel, kept / wheel.name)
        return sorted(kept.glob("*.whl"))

    monkeypatch.setattr(setup, "download_wheels", once)
    workdir = tmp_path / "fresh"
    registry.add(
        Device("fresh", sshd.url(workdir), ssh_config=str(sshd.client_config), keep_warm=0)
    )
    before = cli_run("validate", exported / "model.onnx", "--runtime", "cpu", "--on", "fresh")
    assert before.exit_code == 2 and "run cr-edge device setup fresh" in before.output
    first = cli_run("device", "setup", "fresh")
    assert first.exit_code == 0, first.output
    assert "installed" in first.output
    again = cli_run("device", "setup", "fresh")
    assert again.exit_code == 0 and "up to date" in again.output and " 0 pushed" in again.output
    site = list((workdir / "venv" / "lib").glob("python3*/site-packages"))
    installed = {p.name.split("-")[0].lower() for p in site[0].glob("*.dist-info")}
    assert {"cr_edge", "numpy", "onnxruntime", "onnx"} <= installed
    assert not any(name.startswith("torch") for name in installed)
    after = cli_run("validate", exported / "model.onnx", "--runtime", "cpu", "--on", "fresh")
    assert after.exit_code == 0, after.output
    assert "cpu@fresh" in after.output
