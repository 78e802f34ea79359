"""The exec transport (a command prefix on this machine) and what every device shares.

Reliability rows 24 (no Python or no cr-edge there: "run cr-edge device setup NAME"),
25 (malformed, oversized or hostile answers rejected by size cap and schema, one line),
26 (arguments reach the device intact) and 27 (the workdir is 0700 and locked; an
interrupted push never leaves a file taken as complete). The device here is this
machine through ``env``, running this Python, so nothing needs setting up.
"""

from __future__ import annotations

import fcntl
import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import device_fixtures as fx
import pytest

from cr_edge.devices import registry, remote, reports
from cr_edge.devices.fingerprint import fingerprint
from cr_edge.devices.registry import Device
from cr_edge.devices.remote import open_transport, open_workdir
from cr_edge.devices.transport import PUSH_SH, DeviceError, ExecTransport, file_digest
from cr_edge.validate.validator import validate

device_home, exec_device = fx.device_home, fx.exec_device
HOSTILE = ["a b", "'", '"', "$(touch {m})", "; touch {m}", "`touch {m}`", "\\", "*", "$HOME", "-x"]


def _one_error_line(result, *words: str) -> str:
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert all(w in lines[0] for w in words), lines[0]
    return lines[0]


def test_argv_reaches_the_device_intact(exec_device: Device, tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    words = [w.format(m=marker) for w in HOSTILE]
    transport = open_transport(exec_device)
    script = "import sys, json; print(json.dumps(sys.argv[1:]))"
    code, out, _ = transport.run([sys.executable, "-c", script, *words], timeout=30)
    assert code == 0 and json.loads(out) == words
    # adb-style prefixes hand one string to a shell: the same words must survive that too
    shell = ExecTransport(
        ["sh", "-c", 'eval "exec $1"', "sh"], "test", str(tmp_path), 30, quote=True
    )
    code, out, _ = shell.run([sys.executable, "-c", script, *words], timeout=30)
    assert code == 0 and json.loads(out) == words
    assert not marker.exists()


def test_push_is_content_addressed_checked_and_private(exec_device: Device, tmp_path: Path) -> None:
    transport = open_transport(exec_device)
    data = os.urandom(300_000)
    local = tmp_path / "blob.bin"
    local.write_bytes(data)
    digest = file_digest(local)[0]
    assert open_workdir(transport, [digest]) == [digest]
    workdir = Path(transport.workdir)
    assert workdir.stat().st_mode & 0o777 == 0o700
    transport.push(local, f"blobs/{digest}")
    assert (workdir / "blobs" / digest).read_bytes() == data
    assert open_workdir(transport, [digest]) == []  # a second run pushes nothing
    assert transport.fetch(f"blobs/{digest}", len(data)) == data
    with pytest.raises(DeviceError, match="over 1000 bytes"):
        transport.fetch(f"blobs/{digest}", 1000)


class _Interrupted:
    """A file whose reading is interrupted (Ctrl-C) after ``after`` bytes."""

    def __init__(self, data: bytes, after: int) -> None:
        self.data, self.after, self.at = data, after, 0

    def read(self, n: int) -> bytes:
        if self.at >= self.after:
            raise KeyboardInterrupt
        chunk = self.data[self.at : min(self.at + n, self.after)]
        self.at += len(chunk)
        return chunk


def test_ctrl_c_during_a_push_leaves_nothing_taken_as_complete(
    exec_device: Device, tmp_path: Path
) -> None:
    transport = open_transport(exec_device)
    data = os.urandom(3 << 20)
    local = tmp_path / "big.bin"
    local.write_bytes(data)
    digest = file_digest(local)[0]
    open_workdir(transport, [digest])
    argv = [
        "sh",
        "-c",
        PUSH_SH,
        "sh",
        transport.workdir,
        f"blobs/{digest}",
        digest,
        str(len(data)),
    ]
    with pytest.raises(KeyboardInterrupt):
        transport.run(argv, stdin=_Interrupted(data, 1 << 20), timeout=30)
    time.sleep(0.5)  # the device side notices the end of its input and cleans up
    blobs = Path(transport.workdir) / "blobs"
    assert not (blobs / digest).exists()
    assert open_workdir(transport, [digest]) == [digest]  # the next run pushes it again
    transport.push(local, f"blobs/{digest}")
    assert (blobs / digest).read_bytes() == data


KILLED_PUSH = textwrap.dedent(
    """
    import sys, time
    from cr_edge.devices.transport import ExecTransport
    t = ExecTransport(["env"], "test", sys.argv[1], 60)
    def slow(n):
        print("sent", n, flush=True)
        time.sleep(0.2)
    t.push(sys.argv[2], "blobs/" + sys.argv[3], slow)
    """
)


@pytest.mark.parametrize(
    "whole_group", [False, True], ids=["host-killed", "host-and-device-killed"]
)
def test_sigkill_during_a_push_leaves_no_blob(
    exec_device: Device, tmp_path: Path, whole_group: bool
) -> None:
    """Row 27: SIGKILL of the host mid-push (and of the device's shell with it): the blob
    never appears under its name; a leftover ``.part-*`` is never listed as present."""
    transport = open_transport(exec_device)
    local = tmp_path / "big.bin"
    local.write_bytes(os.urandom(8 << 20))
    digest = file_digest(local)[0]
    open_workdir(transport, [digest])
    proc = subprocess.Popen(
        [sys.executable, "-c", KILLED_PUSH, transport.workdir, str(local), digest],
        stdout=subprocess.PIPE,
        start_new_session=True,
    )
    assert proc.stdout is not None
    for _ in range(2):
        assert proc.stdout.readline().startswith(b"sent")
    if whole_group:
        os.killpg(proc.pid, signal.SIGKILL)
    else:
        proc.send_signal(signal.SIGKILL)
    proc.wait()
    time.sleep(0.5)
    blobs = Path(transport.workdir) / "blobs"
    assert not (blobs / digest).exists()
    assert open_workdir(transport, [digest]) == [digest]
    transport.push(local, f"blobs/{digest}")
    assert file_digest(blobs / digest)[0] == digest
    if whole_group:
        os.killpg(proc.pid, signal.SIGKILL) if _group_alive(proc.pid) else None


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


@pytest.mark.slow
def test_validate_on_an_exec_device(
    cli_run, exec_device: Device, exported: Path, tmp_path: Path
) -> None:
    out = tmp_path / "report.json"
    result = cli_run(
        "validate",
        exported / "model.onnx",
        "--runtime",
        "cpu,ort-mobile",
        "--on",
        "here",
        "--json",
        out,
    )
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    runtimes = {r["runtime"] for r in report["results"]}
    assert {"cpu", "ort-mobile", "cpu@here", "ort-mobile@here"} <= runtimes
    for row in report["results"]:
        assert row["outputs"]["status"] == "PASS", row
    assert report["devices"]["here"]["fingerprint"]["python_path"]
    assert list((Path(exec_device.workdir) / "runs").iterdir()) == []  # each run cleans up


def test_no_python_there_says_run_setup(
    cli_run, device_home: Path, exported: Path, tmp_path: Path
) -> None:
    registry.add(
        Device(
            "bare", "exec:env", python=str(tmp_path / "no" / "python"), workdir=str(tmp_path / "w")
        )
    )
    out = tmp_path / "r.json"
    result = cli_run(
        "validate", exported / "model.onnx", "--runtime", "cpu", "--on", "bare", "--json", out
    )
    _one_error_line(result, "run cr-edge device setup bare")
    assert not out.exists()


def test_python_without_cr_edge_says_run_setup(
    cli_run, device_home: Path, exported: Path, tmp_path: Path
) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    registry.add(
        Device(
            "empty", "exec:env", python=str(venv / "bin" / "python"), workdir=str(tmp_path / "w")
        )
    )
    result = cli_run("validate", exported / "model.onnx", "--runtime", "cpu", "--on", "empty")
    _one_error_line(result, "no cr_edge", "run cr-edge device setup empty")


@pytest.mark.parametrize(
    ("answer", "words"),
    [
        ("printf 'not json'", "not valid JSON"),
        ("head -c 70000000 /dev/zero", "more than"),
        (
            """printf '{"format": "cr-edge-device-run", "version": 1, "status": "ok"}'""",
            "invalid report",
        ),
        ("python3 -c 'print(\"[\" * 100000)'", "not valid JSON"),
    ],
    ids=["garbage", "oversized", "no-fingerprint", "deep"],
)
def test_hostile_answers_are_one_line(
    cli_run, device_home: Path, exported: Path, tmp_path: Path, answer: str, words: str
) -> None:
    """Row 25 end to end: a 'Python' on the device that answers with anything it likes."""
    fake = tmp_path / "python"
    fake.write_text(f"#!/bin/sh\ncat > /dev/null\n{answer}\n")
    fake.chmod(0o755)
    registry.add(Device("evil", "exec:env", python=str(fake), workdir=str(tmp_path / "w")))
    out = tmp_path / "r.json"
    result = cli_run(
        "validate", exported / "model.onnx", "--runtime", "cpu", "--on", "evil", "--json", out
    )
    _one_error_line(result, "device evil", words)
    assert not out.exists()


@pytest.fixture(scope="module")
def real_envelope(exported: Path) -> bytes:
    """What an honest device answers for the battery's export, built from a real validation."""
    report = validate([exported / "model.onnx"], "cpu")
    envelope = {
        "format": reports.FORMAT,
        "version": reports.VERSION,
        "status": "ok",
        "message": "",
        "exit_code": 0,
        "fingerprint": fingerprint(str(exported)),
        "report": json.loads(json.dumps(report.to_json())),
    }
    return json.dumps(envelope).encode()


def test_the_honest_envelope_is_accepted(real_envelope: bytes) -> None:
    doc = reports.envelope(real_envelope, "device t")
    assert reports.rows(doc["report"])[0].outputs.status == "PASS"


def _hostile(doc: dict) -> list[tuple[str, object]]:
    row = doc["report"]["results"][0]

    def edit(fn) -> dict:
        copy = json.loads(json.dumps(doc))
        fn(copy, copy["report"]["results"][0])
        return copy

    return [
        ("pass-without-checks", edit(lambda d, r: r["outputs"].update(checks=[]))),
        (
            "verdict-lies",
            edit(
                lambda d, r: r["outputs"].update(status="FAIL") or d["report"].update(passed=True)
            ),
        ),
        ("nan-error", b'{"format": "cr-edge-device-run", "version": 1, "status": "ok", "x": NaN}'),
        ("shape-string", edit(lambda d, r: r["outputs"]["checks"][0].update(shape="(1, 2)"))),
        ("status-unknown", edit(lambda d, r: r["derivatives"].update(status="MAYBE"))),
        ("huge-string", edit(lambda d, r: r.update(runtime="x" * 100_000))),
        ("deep-figures", edit(lambda d, r: r["coverage"].update(figures=_nest(50)))),
        ("bool-as-int", edit(lambda d, r: r["outputs"]["checks"][0].update(passed=1))),
        ("fingerprint-object", edit(lambda d, r: d["fingerprint"].update(arch={"a": 1}))),
        ("wrong-format", edit(lambda d, r: d.update(format="other"))),
        ("report-list", edit(lambda d, r: d.update(report=[row]))),
    ]


def _nest(depth: int) -> dict:
    doc: dict = {}
    for _ in range(depth):
        doc = {"a": doc}
    return doc


def test_hostile_envelopes_are_rejected_by_schema(real_envelope: bytes) -> None:
    doc = json.loads(real_envelope)
    for name, bad in _hostile(doc):
        data = bad if isinstance(bad, bytes) else json.dumps(bad).encode()
        with pytest.raises(DeviceError) as e:
            envelope = reports.envelope(data, "device t")
            reports.validation(envelope["report"], "device t")
        assert "\n" not in str(e.value), name
        assert str(e.value).startswith("device t: "), name


def test_mutated_envelopes_never_escape_as_anything_but_device_errors(real_envelope: bytes) -> None:
    """A bounded fuzz: truncations and byte flips of an honest answer (more with CR_EDGE_FUZZ)."""
    rng = random.Random(23)
    count = int(os.environ.get("CR_EDGE_FUZZ", "300"))
    accepted = 0
    for _ in range(count):
        data = bytearray(real_envelope)
        if rng.random() < 0.3:
            data = data[: rng.randrange(len(data))]
        else:
            for _ in range(rng.randint(1, 8)):
                data[rng.randrange(len(data))] = rng.randrange(256)
        try:
            envelope = reports.envelope(bytes(data), "device t")
            reports.validation(envelope["report"], "device t")
            accepted += 1
        except DeviceError as e:
            assert "\n" not in str(e)
    assert accepted < count  # the corpus does exercise the rejections


def test_the_workdir_lock_makes_a_second_command_wait(
    cli_run, exec_device: Device, exported: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Row 27: a command on a device whose workdir another command holds waits, then says so."""
    transport = open_transport(exec_device)
    open_workdir(transport, [])
    monkeypatch.setattr(remote, "LOCK_TIMEOUT", 1.0)
    with open(Path(transport.workdir) / ".lock", "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        result = cli_run("validate", exported / "model.onnx", "--runtime", "cpu", "--on", "here")
    _one_error_line(result, "busy")


@pytest.mark.slow
def test_two_commands_on_one_device_at_once(
    exec_device: Device, exported: Path, tmp_path: Path
) -> None:
    """Row 27: two validations on one device at the same moment both finish, both right."""
    env = dict(os.environ)
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "cr_edge.cli",
                "validate",
                str(exported / "model.onnx"),
                "--runtime",
                "cpu",
                "--on",
                "here",
                "--json",
                str(tmp_path / f"r{k}.json"),
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for k in range(2)
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err.decode()
    for k in range(2):
        rows = json.loads((tmp_path / f"r{k}.json").read_text())["results"]
        assert [r["outputs"]["status"] for r in rows if r["runtime"] == "cpu@here"] == ["PASS"]
    blobs = Path(exec_device.workdir) / "blobs"
    for blob in blobs.iterdir():
        assert file_digest(blob)[0] == blob.name  # nothing corrupted, no .part left


@pytest.mark.slow
def test_profile_on_an_exec_device(
    cli_run, exec_device: Device, exported: Path, tmp_path: Path
) -> None:
    out = tmp_path / "profile.json"
    model = exported / "model.onnx"
    result = cli_run(
        "profile", model, exported / "model.ort", "--runtime", "cpu", "--iters", "50", "--warmup", "5",
        "--no-memory", "--no-floor", "--on", "here", "--json", out,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "latency on @here" in result.output
    device = json.loads(out.read_text())["devices"]["here"]
    assert device["timing"] == "measured on the device" and not device["emulated"]
    assert {r["runtime"] for r in device["results"]} == {"cpu@here"}
    assert {r["artifact"] for r in device["results"]} == {str(model), str(exported / "model.ort")}
    assert len(device["comparisons"]) == 1  # two models interleaved: their ratio, measured there


def test_an_emulated_latency_is_never_a_timing(exec_device: Device, exported: Path) -> None:
    """The same device answer, as if it came from qemu: rows marked, no ratio kept."""
    from cr_edge.devices.commands import NOT_A_TIMING, label_profile
    from cr_edge.devices.remote import DeviceRun

    row = {"artifact": "0/model.onnx", "file": "0/model.onnx", "runtime": "cpu", "batch": 1,
           "threads": None, "latency": {"p50_ms": 1.0}}  # fmt: skip
    for emulated in (False, True):
        report = {"results": [dict(row)], "comparisons": [{"ratio": 1.5}]}
        run = DeviceRun("pi", "emulated:arm64", emulated, {}, report, 0,
                        remote_paths={"0/model.onnx": str(exported / "model.onnx")})  # fmt: skip
        labelled = label_profile(run).report
        assert labelled["results"][0]["runtime"] == "cpu@pi"
        assert labelled["results"][0]["file"] == str(exported / "model.onnx")
        assert (labelled["results"][0].get("timing") == NOT_A_TIMING) is emulated
        assert (labelled["comparisons"] == []) is emulated


def test_check_of_a_device_not_set_up_says_what_to_run(
    cli_run, device_home: Path, tmp_path: Path
) -> None:
    """Row 24 for ``device check``: it still describes the device, from its python3."""
    registry.add(Device("new", "exec:env", workdir=str(tmp_path / "w")))
    result = cli_run("device", "check", "new")
    assert result.exit_code == 0, result.output
    assert "run cr-edge device setup new" in result.output
    assert f"workdir        {tmp_path / 'w'}" in result.output
