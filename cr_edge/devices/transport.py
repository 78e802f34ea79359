"""How cr-edge reaches a device: an argument vector in, exit code and bytes out.

Two transports share one small protocol (``Transport``): ``ExecTransport`` puts a
command prefix in front of the device command (``chroot ROOT``, ``docker exec box``);
``SshTransport`` drives the user's own OpenSSH client with their keys, config and
known_hosts. ssh hands the remote side one string that the login shell splits, so
every remote command is built as an argument vector and joined with ``shlex.quote``
here, in one place: a path with spaces, quotes, ``$()`` or ``;`` arrives as the same
bytes, and nothing the user did not name ever runs. Host-key checking is never
turned off by cr-edge, and ``BatchMode=yes`` makes a missing key or an unknown host
a one-line error rather than a prompt. One multiplexed connection (``ControlMaster``,
kept 60 s) carries every step of a command, and the next command within a minute.

Pushes and fetches are built on ``run`` with constant ``sh`` scripts whose only
inputs are positional arguments. A push lands under a temporary name, is checked
(size and sha256, on the device) and only then renamed: an interrupted push never
leaves a file under its final name. Output is capped while it is read, so a device
that sends gigabytes costs the host nothing but an error.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import os
import shlex
import signal
import stat
import subprocess
import tempfile
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import BinaryIO, Protocol

from cr_edge.errors import InputError

MAX_OUTPUT = 64 << 20  # bytes a device may send on stdout for one command
STDERR_TAIL = 64 << 10  # the end of stderr is kept: the error is at the end
CHUNK = 1 << 20
READER_GRACE = 5.0  # seconds for its pipes to close once the process has exited
_LIVE: set[subprocess.Popen] = set()  # device commands running now, ended at exit
Progress = Callable[[int], None]  # called with each chunk's byte count as it is sent

# Exit codes of the push script, so the host can say what went wrong on the device.
_PUSH_ERRORS = {
    90: "cannot enter the workdir",
    91: "cannot create the folder",
    92: "cannot write the file (disk full?)",
    93: "the file arrived incomplete",
    94: "the device has no sha256sum",
    95: "the file arrived with other bytes (sha256 differs)",
    96: "cannot rename the file into place",
}
_ENTER = 'case $1 in /*) ;; *) cd || exit 90 ;; esac; cd -- "$1" || exit 90; '
PUSH_SH = (
    "umask 077; "
    + _ENTER
    + 'dest=$2; sha=$3; size=$4; dir=$(dirname -- "$dest") && mkdir -p -- "$dir" || exit 91; '
    'tmp="$dir/.part-$sha-$$"; '
    "trap 'rm -f -- \"$tmp\"' EXIT; trap 'rm -f -- \"$tmp\"; exit 1' HUP INT TERM PIPE; "
    'cat > "$tmp" || exit 92; '
    '[ "$(wc -c < "$tmp")" -eq "$size" ] || exit 93; '
    'got=$(sha256sum < "$tmp") || exit 94; '
    '[ "${got%% *}" = "$sha" ] || exit 95; '
    'mv -f -- "$tmp" "$dest" || exit 96'
)
FETCH_SH = _ENTER + 'exec head -c "$3" -- "$2"'


class DeviceError(InputError):
    """A device could not be reached or did not do what it was asked; one line, exit 2."""


class Transport(Protocol):
    """Runs argument vectors on one device and moves files into and out of its workdir."""

    label: str  # "device NAME (URL)", the start of every message
    workdir: str  # relative paths are under the remote home until ``resolve`` makes it absolute

    def run(
        self,
        argv: Sequence[str],
        *,
        stdin: bytes | BinaryIO | None = None,
        timeout: float,
        max_output: int = MAX_OUTPUT,
        on_bytes: Progress | None = None,
    ) -> tuple[int, bytes, bytes]: ...

    def push(self, local_path: Path, remote_rel: str, on_bytes: Progress | None = None) -> None: ...

    def fetch(self, remote_rel: str, max_bytes: int) -> bytes: ...

    def close(self) -> None: ...


class _Transport:
    """``push`` and ``fetch`` over ``run``; subclasses say how an argv reaches the device."""

    def __init__(self, label: str, workdir: str, timeout: float) -> None:
        self.label = label
        self.workdir = workdir
        self.timeout = timeout

    def local_argv(self, argv: Sequence[str]) -> list[str]:
        raise NotImplementedError

    def check_transport(self, code: int, stderr: bytes) -> None:
        """Raise a ``DeviceError`` if ``code`` says the transport itself failed."""

    def run(
        self,
        argv: Sequence[str],
        *,
        stdin: bytes | BinaryIO | None = None,
        timeout: float,
        max_output: int = MAX_OUTPUT,
        on_bytes: Progress | None = None,
    ) -> tuple[int, bytes, bytes]:
        """Run ``argv`` on the device; (exit code, stdout, stderr). Transport failures raise."""
        if not argv or any(not isinstance(a, str) or "\x00" in a for a in argv):
            raise DeviceError(f"{self.label}: a device command must be non-empty strings")
        code, out, err = call(
            self.local_argv(argv), self.label, stdin, timeout, max_output, on_bytes
        )
        self.check_transport(code, err)
        return code, out, err

    def push(self, local_path: Path, remote_rel: str, on_bytes: Progress | None = None) -> None:
        """Copy ``local_path`` to ``<workdir>/<remote_rel>``: temporary name, checked, renamed."""
        digest, size = file_digest(local_path)
        with open(local_path, "rb") as f:
            argv = ["sh", "-c", PUSH_SH, "sh", self.workdir, remote_rel, digest, str(size)]
            timeout = self.timeout + size / 1e6  # at least 1 MB/s once connected
            code, _, err = self.run(argv, stdin=f, timeout=timeout, on_bytes=on_bytes)
        if code != 0:
            why = _PUSH_ERRORS.get(code) or last_line(err) or f"exit {code}"
            raise DeviceError(f"{self.label}: push of {Path(local_path).name} failed: {why}")

    def fetch(self, remote_rel: str, max_bytes: int) -> bytes:
        """The bytes of ``<workdir>/<remote_rel>``; a file over ``max_bytes`` is refused."""
        argv = ["sh", "-c", FETCH_SH, "sh", self.workdir, remote_rel, str(max_bytes + 1)]
        code, out, err = self.run(argv, timeout=self.timeout, max_output=max_bytes + 1)
        if code != 0:
            raise DeviceError(f"{self.label}: cannot read {remote_rel}: {last_line(err)}")
        if len(out) > max_bytes:
            raise DeviceError(f"{self.label}: {remote_rel} is over {max_bytes} bytes; refused")
        return out

    def close(self) -> None:
        """Release what the transport holds open (the ssh master); idempotent."""


class ExecTransport(_Transport):
    """A command prefix: ``prefix + argv`` runs on the device, as an argument vector.

    ``quote``: the prefix hands its arguments to a shell as one string (``adb shell``
    does), so the argv is joined with ``shlex.quote`` first, as for ssh.
    """

    def __init__(
        self,
        prefix: Sequence[str],
        label: str,
        workdir: str,
        timeout: float,
        quote: bool | None = None,
    ) -> None:
        super().__init__(label, workdir, timeout)
        self.prefix = list(prefix)
        self.quote = _joins_into_shell(self.prefix) if quote is None else quote

    def local_argv(self, argv: Sequence[str]) -> list[str]:
        return [*self.prefix, shlex.join(argv)] if self.quote else [*self.prefix, *argv]


class SshTransport(_Transport):
    """The user's OpenSSH client: their keys, ssh_config and known_hosts; one shared connection."""

    def __init__(
        self,
        host: str,
        label: str,
        workdir: str,
        timeout: float,
        user: str | None = None,
        port: int | None = None,
        config: str | None = None,
        options: Sequence[str] = (),
    ) -> None:
        super().__init__(label, workdir, timeout)
        self.host = host
        self.base = [  # ssh takes the first value it is given: the user's options go first
            "ssh",
            "-T",
            *(x for option in options for x in ("-o", option)),
            *("-o", "BatchMode=yes"),
            *("-o", "ControlMaster=auto"),
            *("-o", f"ControlPath={control_dir()}/%C"),
            *("-o", "ControlPersist=60"),
            *("-o", f"ConnectTimeout={max(1, round(timeout))}"),
            *("-o", "ServerAliveInterval=10"),
            *(("-F", config) if config else ()),
            *(("-p", str(port)) if port else ()),
            *(("-l", user) if user else ()),
        ]

    def local_argv(self, argv: Sequence[str]) -> list[str]:
        return [*self.base, "--", self.host, shlex.join(argv)]

    def check_transport(self, code: int, stderr: bytes) -> None:
        if code != 255:  # ssh's own failures; a remote command's 255 is rare and still an error
            return
        line = last_line(stderr) or "ssh exited 255"
        if "Permission denied" in line:
            hint = "the device refused the key; check your key, agent or --ssh-config"
        elif "Host key verification failed" in line or "HOST IDENTIFICATION" in stderr.decode(
            errors="replace"
        ):
            hint = (
                "its host key is unknown or changed; connect once with ssh to check and accept it"
            )
        else:
            hint = "check that the host is up and reachable"
        raise DeviceError(f"{self.label}: ssh failed: {line} ({hint})")

    def close(self) -> None:
        with contextlib.suppress(OSError, subprocess.TimeoutExpired):  # no master: nothing to do
            subprocess.run(
                [*self.base, "-O", "exit", "--", self.host],
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=10,
            )


def call(
    argv: list[str],
    label: str,
    stdin: bytes | BinaryIO | None,
    timeout: float,
    max_output: int = MAX_OUTPUT,
    on_bytes: Progress | None = None,
) -> tuple[int, bytes, bytes]:
    """Run a local process with a deadline, streaming ``stdin``, capping what it sends back."""
    try:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL if stdin is None else subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,  # its own process group: a kill reaches what it started
        )
    except OSError as e:
        raise DeviceError(
            f"{label}: cannot start {argv[0]} ({e.strerror}); install it or fix the device URL"
        ) from e
    _LIVE.add(proc)
    out, err = _Sink(max_output, keep="head"), _Sink(STDERR_TAIL, keep="tail")
    expired = threading.Event()

    def expire() -> None:
        expired.set()
        _kill(proc)

    timer = threading.Timer(timeout, expire)
    readers = [
        threading.Thread(target=out.drain, args=(proc.stdout, proc), daemon=True),
        threading.Thread(target=err.drain, args=(proc.stderr, proc), daemon=True),
    ]
    timer.start()
    for reader in readers:
        reader.start()
    try:
        if stdin is not None:
            _feed(proc, stdin, on_bytes)
        proc.wait()
    except BaseException:  # Ctrl-C or any error: the device side sees the stream end early
        _kill(proc)
        proc.wait()
        raise
    finally:
        _LIVE.discard(proc)
        timer.cancel()
        for reader in readers:  # a child it left behind may hold a pipe open: end its group
            reader.join(READER_GRACE)
            if reader.is_alive():
                _kill(proc)
                reader.join()
    if expired.is_set():
        raise DeviceError(
            f"{label}: no answer within {timeout:g} s; check the device is up, or raise its "
            "timeout (cr-edge device add --timeout)"
        )
    if out.overflow:
        raise DeviceError(f"{label}: sent more than {max_output} bytes of output; refused")
    return proc.returncode, out.data(), err.data()


def _feed(proc: subprocess.Popen, stdin: bytes | BinaryIO, on_bytes: Progress | None) -> None:
    pipe = proc.stdin
    assert pipe is not None  # opened above whenever stdin is given
    try:
        if isinstance(stdin, bytes):
            pipe.write(stdin)
            if on_bytes:
                on_bytes(len(stdin))
        else:
            while chunk := stdin.read(CHUNK):
                pipe.write(chunk)
                if on_bytes:
                    on_bytes(len(chunk))
    except BrokenPipeError:
        pass  # the device stopped reading; its exit code says why
    finally:
        with contextlib.suppress(BrokenPipeError):
            pipe.close()


class _Sink:
    """Collects a stream up to ``limit`` bytes (the head or the tail); past that, records it."""

    def __init__(self, limit: int, keep: str) -> None:
        self.limit, self.keep = limit, keep
        self.chunks: list[bytes] = []
        self.size = 0
        self.overflow = False

    def drain(self, stream: BinaryIO, proc: subprocess.Popen) -> None:
        while chunk := stream.read1(CHUNK) if hasattr(stream, "read1") else stream.read(CHUNK):
            self.chunks.append(chunk)
            self.size += len(chunk)
            if self.size > self.limit:
                if self.keep == "head":
                    self.overflow = True
                    _kill(proc)
                    return
                data = b"".join(self.chunks)[-self.limit :]
                self.chunks, self.size = [data], len(data)

    def data(self) -> bytes:
        return b"".join(self.chunks)


@atexit.register
def _end_live() -> None:
    """A command interrupted on the host (Ctrl-C) ends what it still runs on its devices:
    each device command runs in its own process group, out of reach of the terminal's signal."""
    for proc in list(_LIVE):
        _kill(proc)


def _kill(proc: subprocess.Popen) -> None:
    """SIGKILL the process and its group (what it started: a device command's children)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError):
        proc.kill()


def file_digest(path: Path) -> tuple[str, int]:
    """(sha256 hex, size) of a local file, read in chunks."""
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size


def last_line(data: bytes) -> str:
    """The last non-empty line of a device's stderr, short, for a one-line message."""
    lines = [line.strip() for line in data.decode(errors="replace").splitlines() if line.strip()]
    text = lines[-1] if lines else ""
    return text if len(text) <= 300 else text[:297] + "..."


def control_dir() -> str:
    """A private folder for ssh's control sockets: ours, 0700, not a symlink.

    Under ``$XDG_RUNTIME_DIR`` where there is one, else in the temp folder. A socket
    path must stay under ~100 bytes, which ``%C`` (a 40-character hash) allows.
    """
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    base = runtime if runtime and os.path.isdir(runtime) else tempfile.gettempdir()
    path = os.path.join(base, f"cr-edge-ssh-{os.getuid()}")
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    except OSError as e:
        raise DeviceError(f"{path}: cannot create ssh's control folder ({e.strerror})") from e
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o077:
        raise DeviceError(f"{path}: not a private folder of this user (0700); remove it and retry")
    return path


def _joins_into_shell(prefix: list[str]) -> bool:
    """``adb [-s SERIAL] shell``: adb joins its arguments with spaces for the device's sh."""
    return bool(prefix) and os.path.basename(prefix[0]) == "adb" and "shell" in prefix[1:]
