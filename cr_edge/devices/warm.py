"""The warm path: a process on the device that keeps cr-edge imported between commands.

Why: a cold ``validate --on`` starts a Python on the device and imports numpy, onnx,
onnxruntime and cr-edge before it validates anything: about a second on a desktop
core, several on a board, paid again by every command. A server that stays up in
the workdir pays it once; each command then costs one ssh round trip, a small
stdlib client, and a ``fork``.

Run ON the device, standard library only (Python 3.8+), in one namespace with
``fingerprint.py`` and ``agent.py``: the host sends all three (``SOURCES``).

* ``warm_request`` (the client, in the agent ssh starts): connect to
  ``<workdir>/agent.sock``, send the request, and wait a few seconds at most for the
  server's one-byte acknowledgement, then for the answer. Anything but a complete
  answer gives None, and the agent runs the command cold, as if there were no server:
  a stale socket after a reboot or a ``kill -9``, a server stopped or hung, a server
  killed in the middle of a command, a server of other code. It never waits on a
  server that does not answer, and a warm failure never becomes the command's.
* ``warm_spawn``: after a cold run, start a server in the background (its own
  session, stdio on /dev/null) unless one already holds ``agent.server.lock``.
* ``warm_serve``: the server. One per workdir (``flock`` on ``agent.server.lock``,
  non-blocking: a second one exits at once); it imports first, then binds the
  socket (0600, in the 0700 workdir; peers of another uid are refused) and forks per
  request. The child takes the workdir's lock exactly as a cold agent does (shared for
  a validation, exclusive for a profile) and runs ``cr_edge.cli`` in a grandchild of
  its own process group, killed if the client goes away (Ctrl-C or kill -9 of the host
  ends the ssh session, which the client notices: the agent's ``watch_host``). The
  server exits after ``keep_warm`` seconds without a request, and at once when a
  request carries another key: other code (``device setup`` reinstalled cr-edge),
  another Python, another CPU (an emulated root shared by CPU models) or another
  environment for the kernels' thread counts.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import importlib
import importlib.util
import json
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import traceback

WARM_SOCKET = "agent.sock"
WARM_SERVER_LOCK = "agent.server.lock"
WARM_LOG = "agent.server.log"  # why the last server left: for whoever wonders
WARM_ACK_S = 10.0  # a server that does not acknowledge within this is not waited for
WARM_MAX_REQUEST = 8 << 20
WARM_ENV = ("OMP_", "OPENBLAS_", "MKL_", "ORT_", "PYTHON", "QEMU_", "LD_", "PATH", "HOME")


def warm_key() -> str:
    """What a server's answers depend on beyond the request: its code, Python and CPU.

    The code is the host's device-side sources, the Python, and where cr_edge, numpy,
    onnx and onnxruntime are installed; the server also checks, at each request, that no
    module it has imported changed on disk since (``_imported``: ``device setup``
    rewrites them; a module it has not imported yet is read fresh by the fork). Not the
    packages' folders' mtimes: importing writes ``__pycache__`` into them, so the
    server's own first imports would change its key. The CPU is the HWCAP words (qemu
    fills them per emulated model)."""
    h = hashlib.sha256()
    for name in sorted(SOURCES):  # noqa: F821 - set by the bootstrap beside this file
        h.update(name.encode() + b"\0" + SOURCES[name].encode() + b"\0")  # noqa: F821
    h.update(f"{sys.executable}\0{sys.version}\0".encode())
    for module in ("cr_edge", "numpy", "onnx", "onnxruntime"):
        spec = importlib.util.find_spec(module)
        roots = list(spec.submodule_search_locations or []) if spec else []
        h.update(f"{module}:{roots}\0".encode())
    aux = _auxv()  # noqa: F821 - fingerprint.py's, in the same namespace
    h.update(f"{aux.get(16)}:{aux.get(26)}\0".encode())
    env = sorted((k, v) for k, v in os.environ.items() if k.startswith(WARM_ENV))
    h.update(json.dumps(env).encode())
    return h.hexdigest()


def warm_request(workdir: str, spec: dict) -> bytes | None:
    """The server's answer to ``spec`` (the envelope's bytes), or None: run it cold."""
    path = os.path.join(workdir, WARM_SOCKET)
    if not os.path.exists(path):
        return None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(float(spec.get("warm_ack", WARM_ACK_S)))
        sock.connect(path)  # a stale socket (no process behind it): ECONNREFUSED
        sock.sendall(json.dumps({"key": warm_key(), "spec": spec}).encode() + b"\n")
        if sock.recv(1) != b"+":
            return None
        sock.settimeout(None)  # the command itself may take long; the host has the deadline
        answer = _answer(sock)
        doc = json.loads(answer)  # a server killed mid-answer sends a truncated document
        return answer if isinstance(doc, dict) and doc.get("status") else None
    except (OSError, ValueError):
        return None
    finally:
        sock.close()


def _answer(sock: socket.socket) -> bytes:
    """Read the server's answer until it closes, watching the host meanwhile (the agent's
    ``watch_host``): when the host is gone (Ctrl-C or kill -9 ends its ssh session),
    ``HostGone`` leaves, and closing the socket makes the server end the command."""
    chunks = []
    while True:
        if watch_host([sock.fileno()], None):  # noqa: F821 - agent.py's, in the same namespace
            chunk = sock.recv(1 << 20)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)


def warm_spawn(workdir: str, spec: dict) -> None:
    """Start a server for ``workdir`` in the background, unless one is up or starting."""
    lock = os.path.join(workdir, WARM_SERVER_LOCK)
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # free: no server; released at once
    except OSError:
        return
    finally:
        os.close(fd)
    serve = {
        "action": "serve",
        "workdir": workdir,
        "keep_warm": spec["keep_warm"],
        "preload": spec.get("preload", []),
    }
    script = f"SOURCES = {SOURCES!r}\n" + SOURCES["boot"]  # noqa: F821
    proc = subprocess.Popen(
        [sys.executable, "-", json.dumps(serve)],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=workdir,
        start_new_session=True,  # not in the client's process group: it outlives the command
    )
    proc.stdin.write(script.encode())
    proc.stdin.close()
    proc.returncode = 0  # not waited for: it is the server (no ResourceWarning at exit)


def warm_serve(spec: dict) -> int:
    """Serve requests for ``spec["workdir"]`` until ``keep_warm`` seconds pass without one."""
    workdir, idle = spec["workdir"], float(spec["keep_warm"])
    os.chdir(workdir)
    lock_fd = os.open(WARM_SERVER_LOCK, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return 0  # another server holds the workdir
    os.ftruncate(lock_fd, 0)
    os.write(lock_fd, str(os.getpid()).encode())  # whose it is, for a user (or test) to see
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # leave through ``finally``
    key = warm_key()
    for module in spec.get("preload", []):
        with contextlib.suppress(Exception):
            importlib.import_module(module)
    path = os.path.join(workdir, WARM_SOCKET)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)  # a stale one: its server is gone (it held the lock we hold)
    imported = _imported()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(path)
    os.chmod(path, 0o600)
    sock.listen(16)
    inode = os.stat(path).st_ino
    children: set = set()
    last = time.monotonic()
    why = "stopped"
    try:
        while True:
            children = {pid for pid in children if not _reaped(pid)}
            if children:
                last = time.monotonic()
            left = idle - (time.monotonic() - last)
            if left <= 0:
                why = f"idle for {idle:g} s"
                return 0
            if not _still_ours(path, inode):
                why = "its socket was removed (the workdir went)"
                return 0
            sock.settimeout(min(left, 1.0 if children else 5.0))
            try:
                conn, _ = sock.accept()
            except socket.timeout:  # noqa: UP041 - TimeoutError only from Python 3.10
                continue
            pid = _admit(conn, key, imported, sock, lock_fd)
            if isinstance(pid, str):
                why = pid  # a newer server is due, started by the cold run that follows
                return 0
            if pid > 0:
                children.add(pid)
                last = time.monotonic()
    except BaseException as e:
        why = f"{type(e).__name__}: {e}"
        raise
    finally:
        if _still_ours(path, inode):
            os.unlink(path)
        sock.close()
        with contextlib.suppress(OSError), open(WARM_LOG, "w") as log:
            log.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} server {os.getpid()} left: {why}\n")
        os.close(lock_fd)


def _admit(
    conn: socket.socket, key: str, imported: dict, sock: socket.socket, lock_fd: int
) -> int | str:
    """Read one request; fork its handler. The child's pid, 0 if refused, or why to stop."""
    try:
        conn.settimeout(5.0)
        request = _read_request(conn)
        if request is None:
            conn.close()
            return 0
        changed = [f for f, st in _imported(imported).items() if st != imported[f]]
        if request.get("key") != key or changed:
            conn.sendall(b"-")
            conn.close()
            return f"changed on disk: {changed[0]}" if changed else "a request of another key"
        conn.sendall(b"+")
        pid = os.fork()
    except (OSError, ValueError, AttributeError):
        conn.close()
        return 0
    if pid:
        conn.close()
        return pid
    code = 0  # the request's handler, in the child
    try:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        sock.close()
        os.close(lock_fd)  # the server's lock stays the server's
        conn.settimeout(None)
        envelope = handle(request["spec"], lambda *a: _fork_cli(conn, *a))  # noqa: F821
        envelope["warm"] = True  # served by a server that was up: the host's report says so
        conn.sendall(json.dumps(envelope).encode())
    except BaseException:
        code = 1
    finally:
        os._exit(code)


def _imported(files: dict | None = None) -> dict:
    """``{file: (mtime_ns, size)}`` of every module this process has imported (or of
    ``files``): a change means the server runs code that is no longer on disk."""
    if files is None:
        names = {getattr(m, "__file__", None) for m in list(sys.modules.values())}
        files = dict.fromkeys(n for n in names if isinstance(n, str))
    stats = {}
    for name in files:
        try:
            st = os.stat(name)
            stats[name] = (st.st_mtime_ns, st.st_size)
        except OSError:
            stats[name] = None
    return stats


def _read_request(conn: socket.socket) -> dict | None:
    """The request line of a peer of this uid, or None."""
    if _peer_uid(conn) not in (None, os.getuid()):
        return None
    data = b""
    while not data.endswith(b"\n"):
        chunk = conn.recv(1 << 16)
        if not chunk or len(data) > WARM_MAX_REQUEST:
            return None
        data += chunk
    request = json.loads(data)
    return request if isinstance(request, dict) else None


def _still_ours(path: str, inode: int) -> bool:
    try:
        return os.stat(path).st_ino == inode
    except OSError:
        return False


def _reaped(pid: int) -> bool:
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return True
    return done == pid


def _peer_uid(conn: socket.socket) -> int | None:
    if not hasattr(socket, "SO_PEERCRED"):
        return None
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", creds)[1]


class WarmClientGone(Exception):
    """The client closed its connection (the host's command was interrupted)."""


def _fork_cli(conn: socket.socket, args: list, run_dir: str, env: dict) -> tuple:
    """``cr-edge ARGS`` in a forked grandchild (its own process group, cr-edge imported
    already): (exit code, its stderr). The grandchild is killed if the client goes away."""
    log = os.path.join(run_dir, ".stderr")
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.setpgid(0, 0)
            conn.close()  # the handler watches it; the command has no business with it
            out = os.open(os.devnull, os.O_WRONLY)
            err = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            os.dup2(out, 1)
            os.dup2(err, 2)
            os.chdir(run_dir)
            os.environ.clear()
            os.environ.update(env)
            tempfile.tempdir = None  # read TMPDIR again
            signal.signal(signal.SIGINT, signal.default_int_handler)
            sys.argv = ["cr-edge", *args]
            importlib.import_module("cr_edge.cli")  # registers every command, as -m does
            main = importlib.import_module("cr_edge.cli.group").main
            try:
                main()
                code = 0
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        except BaseException:
            traceback.print_exc()
        finally:
            with contextlib.suppress(Exception):
                sys.stdout.flush()
                sys.stderr.flush()
            os._exit(code)
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        readable, _, _ = select.select([conn], [], [], 0.2)
        if readable and not _alive(conn):
            with contextlib.suppress(OSError):
                os.killpg(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise WarmClientGone()
    code = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
    with open(log, "rb") as f:
        return code, f.read()


def _alive(conn: socket.socket) -> bool:
    try:
        return bool(conn.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT))
    except BlockingIOError:
        return True
    except OSError as e:
        return e.errno in (errno.EAGAIN, errno.EINTR)
