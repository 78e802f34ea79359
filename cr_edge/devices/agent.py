"""The device side of a command: open the workdir, lock it, lay out the files, run, report.

Sent by the host to the device's Python on stdin (``cr_edge.devices.remote``) together
with ``fingerprint.py`` and ``warm.py``, all three run in one namespace; standard
library only, Python 3.8+, so it runs before ``device setup`` too. Its one argument
is a JSON spec; its stdout is one JSON envelope (``format``/``status``/...), which the
host caps and checks; everything cr-edge itself prints goes to stderr.

A run's spec may ask the agent to open the workdir (create it 0700, make its path
absolute) and answers ``missing`` with the blobs it lacks, so that a command with
nothing to push is one round trip. With everything there it asks the workdir's warm
server (``warm.py``) and, if none answers, runs cr-edge in a new Python (cold) and
starts one for the next command.

The workdir's lock is ``flock`` on ``<workdir>/.lock``: a validation takes it shared
(validations of content-addressed files do not disturb each other), a profile or a
setup exclusive (a timing needs the device to itself, a setup rewrites the venv). The
kernel drops it when the process dies, so a killed command never leaves a stale lock.
Each run gets its own folder under ``runs/``, of symlinks named as on the host to the
blobs, and its own ``TMPDIR`` under ``tmp/``, both removed afterwards; nothing is written
outside the workdir.

The host going away ends the command (``watch_host``). ssh without a tty forwards no
signal, so Ctrl-C or ``kill -9`` of the host reaches the device only as the channel
closing. The agent cannot read that from its stdin (the host sends this script there
and closes it at once), so it watches its stdout while it waits (for the workdir's
lock, the cold command or the warm server): ``POLLERR``/``POLLHUP`` when sshd closes
its end, and a one-space heartbeat every ``HEARTBEAT_S`` that fails with ``EPIPE``
when the host's end is gone. The heartbeat is what reaches a ``kill -9``: the host's
ssh (a client of the shared master connection, in its own process group) outlives
its caller and learns of the dead reader only when it has something to write to it;
the master then tells sshd (``eow@openssh.com``), which closes the agent's stdout.
Leading spaces leave the envelope valid JSON. Then the agent kills the command's
process group, removes the run's folders and leaves, which releases the lock. An agent
killed outright (an exec device's host kills the agent's process group) takes its
command with it (``PR_SET_PDEATHSIG``); its folders go at the next exclusive run.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import importlib.util
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time

FORMAT = "cr-edge-device-run"
NEEDED = ("cr_edge", "numpy", "onnxruntime", "click", "rich")
HEARTBEAT_S = 1.0  # how often a waiting agent writes a space to the host (see watch_host)
_HOST = {"fd": None, "beat": 0.0}  # the host's end to watch: this agent's stdout, in main


class HostGone(Exception):
    """Whoever reads this agent's answer went away (the host's ssh ended: Ctrl-C, kill -9)."""


def watch_host(fds: list, timeout: float | None) -> list:
    """Wait until one of ``fds`` is readable or ``timeout`` seconds pass; the readable ones.

    Meanwhile watch the host's end (``_HOST``, set by a run's agent; none in the warm
    server) and raise ``HostGone`` when it is gone: ``POLLERR``/``POLLHUP`` on this
    agent's stdout, or ``EPIPE`` from the heartbeat. Used by every wait of an agent
    that runs a command: the workdir's lock, the cold command, the warm server's answer.
    """
    out = _HOST["fd"]
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        if out is not None and time.monotonic() - _HOST["beat"] >= HEARTBEAT_S:
            _heartbeat(out)
        poller = select.poll()
        for fd in fds:
            poller.register(fd, select.POLLIN)
        if out is not None:
            poller.register(out, 0)  # POLLERR/POLLHUP: the reader closed its end
        wait = HEARTBEAT_S if out is not None else None
        if deadline is not None:
            left = max(0.0, deadline - time.monotonic())
            wait = left if wait is None else min(wait, left)
        ready = []
        for fd, events in poller.poll(None if wait is None else wait * 1000):
            if fd == out and events & (select.POLLERR | select.POLLHUP):
                raise HostGone()
            if fd == out and events & select.POLLNVAL:
                _HOST["fd"] = out = None  # no stdout to watch
            elif fd != out:
                ready.append(fd)
        if ready or (deadline is not None and time.monotonic() >= deadline):
            return ready


def _heartbeat(out: int) -> None:
    """One space to the host, if the pipe has room (never blocks on a host that is slow)."""
    _HOST["beat"] = time.monotonic()
    probe = select.poll()
    probe.register(out, select.POLLOUT)
    events = dict(probe.poll(0)).get(out, 0)
    if events & (select.POLLERR | select.POLLHUP):
        raise HostGone()
    if events & select.POLLOUT:
        try:
            os.write(out, b" ")
        except BrokenPipeError:
            raise HostGone() from None
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.EINTR):
                raise HostGone() from None


def main(argv: list) -> int:
    spec = json.loads(argv[0])
    os.umask(0o077)
    if sys.path and sys.path[0] in ("", "."):
        sys.path.pop(0)  # ``python -`` looks in the caller's folder first: not a device's module
    if spec["action"] == "serve":
        return warm_serve(spec)  # noqa: F821 - warm.py's, in the same namespace
    if spec["action"] == "run":
        _HOST["fd"] = sys.stdout.fileno()  # its reader is the host: watched while we wait
    envelope = {"format": FORMAT, "version": 1, "status": "error", "message": ""}
    answer, cold = None, False
    try:
        if spec.get("open"):  # the workdir made here: one round trip for a command, not two
            spec["workdir"] = _open_workdir(spec["workdir"])
        workdir = spec["workdir"]
        os.chdir(workdir)
        missing = _missing_blobs(spec) if spec["action"] == "run" else []
        if missing:  # the host pushes them and asks again
            _prune_parts()
            envelope.update(status="missing", missing=missing, workdir=workdir)
        else:
            warm = spec["action"] == "run" and spec.get("keep_warm") and not _missing_modules()
            answer = warm_request(workdir, spec) if warm else None  # noqa: F821
            cold = bool(warm) and answer is None
            if answer is None:
                envelope = handle(spec, _subprocess_cli)
    except HostGone:  # nobody reads the answer any more; the command is ended, cleaned up
        return 1
    except OSError as e:
        envelope["message"] = f"{getattr(e, 'filename', None) or spec['workdir']}: {e.strerror}"
    sys.stdout.write(answer.decode("utf-8") if answer else json.dumps(envelope))
    sys.stdout.flush()
    if cold and envelope.get("status") == "ok":  # the next command finds cr-edge imported
        with contextlib.suppress(OSError):
            warm_spawn(spec["workdir"], spec)  # noqa: F821
    return 0


def handle(spec: dict, execute) -> dict:
    """The envelope for ``spec``: the workdir locked, then the run or the setup.

    ``execute(args, run_dir, env) -> (exit code, stderr)`` runs ``cr-edge ARGS``: a new
    Python here (cold), a fork of the warm server there (``warm.py``)."""
    workdir = spec["workdir"]
    envelope = {"format": FORMAT, "version": 1, "status": "error", "message": ""}
    envelope["workdir"] = workdir
    try:
        os.chdir(workdir)
        with _Lock(os.path.join(workdir, ".lock"), spec["lock"], spec["lock_timeout"]) as lock:
            if not lock.held:
                envelope.update(status="busy", message=lock.message)
            elif spec["action"] == "run":
                envelope.update(_run(spec, workdir, execute))
            elif spec["action"] == "setup":
                envelope.update(_setup(spec, workdir))
                envelope["fingerprint"] = fingerprint(workdir, runtime=False)  # noqa: F821
            elif spec["action"] == "clean":
                envelope.update(_clean(spec, workdir))
                envelope["fingerprint"] = fingerprint(workdir, runtime=False)  # noqa: F821
            else:
                envelope["message"] = "unknown action " + repr(spec["action"])
    except OSError as e:
        envelope["message"] = f"{getattr(e, 'filename', None) or workdir}: {e.strerror}"
    return envelope


def _open_workdir(path: str) -> str:
    """Create the workdir (0700, relative paths under the home) with ``blobs/`` and ``runs/``;
    its absolute, resolved path."""
    if not os.path.isabs(path):
        path = os.path.join(os.path.expanduser("~"), path)
    os.makedirs(path, exist_ok=True)
    os.chmod(path, 0o700)
    for sub in ("blobs", "runs"):
        os.makedirs(os.path.join(path, sub), exist_ok=True)
    return os.path.realpath(path)


def _stored(rel: str, digest: str, bundles: dict) -> str:
    """Where a file lives in the workdir: ``blobs/<sha256>``, or in its folder's bundle
    (``bundles/<id>/<name>``: external data must be a regular file beside its model)."""
    prefix, _, name = rel.partition("/")
    return f"bundles/{bundles[prefix]}/{name}" if prefix in bundles else f"blobs/{digest}"


def _missing_blobs(spec: dict) -> list:
    bundles = spec.get("bundles", {})
    stored = {_stored(rel, digest, bundles) for rel, digest in spec["files"]}
    return sorted(p for p in stored if not os.path.isfile(p))


def _prune_parts() -> None:
    """Temporary files of pushes interrupted over an hour ago (never taken as complete)."""
    now = time.time()
    for folder, _, names in os.walk("."):
        if folder.startswith(("./runs", "./tmp", "./venv")):
            continue
        for name in names:
            path = os.path.join(folder, name)
            try:
                if name.startswith(".part-") and now - os.stat(path).st_mtime > 3600:
                    os.unlink(path)
            except OSError:
                pass


def _missing_modules() -> list:
    return [m for m in NEEDED if importlib.util.find_spec(m) is None]


def _subprocess_cli(args: list, run_dir: str, env: dict) -> tuple:
    """``python -m cr_edge.cli ARGS`` (cold) in its own process group; its stdout goes to
    this agent's stderr. Killed with its group when the host goes (``watch_host``), and
    by the kernel if this agent is killed (``_die_with_parent``)."""
    command = [sys.executable, "-m", "cr_edge.cli", *args]
    agent = os.getpid()
    proc = subprocess.Popen(
        command,
        cwd=run_dir,
        env=env,
        stdout=sys.stderr,
        stderr=subprocess.PIPE,
        start_new_session=True,  # a group of its own: one killpg ends all it started
        preexec_fn=lambda: _die_with_parent(agent),
    )
    chunks = []
    try:
        err = proc.stderr.fileno()
        while True:
            if watch_host([err], None):
                chunk = os.read(err, 1 << 16)
                if not chunk:
                    break
                chunks.append(chunk)
        while proc.poll() is None:  # it closed its stderr and runs on
            watch_host([], 0.2)
    except BaseException:  # the host went (HostGone), or this agent was interrupted
        with contextlib.suppress(OSError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise
    finally:
        proc.stderr.close()
    stderr = b"".join(chunks)
    sys.stderr.buffer.write(stderr)
    return proc.returncode, stderr


def _die_with_parent(agent: int) -> None:
    """In the cold command, before exec: SIGKILL when this agent dies (Linux's
    ``PR_SET_PDEATHSIG``), so that an agent killed outright (an exec device whose host
    kills the agent's process group) does not leave the command running in its own group."""
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != agent:  # the agent died before that: nobody to run for
        os._exit(1)


class _Lock:
    def __init__(self, path: str, mode: str, timeout: float) -> None:
        self.path, self.timeout, self.held, self.message = path, timeout, False, ""
        self.kind = fcntl.LOCK_EX if mode == "exclusive" else fcntl.LOCK_SH

    def __enter__(self) -> _Lock:
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                fcntl.flock(self.fd, self.kind | fcntl.LOCK_NB)
                self.held = True
                return self
            except OSError as e:
                if e.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
            if time.monotonic() > deadline:
                self.message = (
                    "the device is busy: another cr-edge command holds its workdir "
                    f"(waited {self.timeout:g} s); retry when it has finished"
                )
                return self
            try:
                watch_host([], 0.1)  # a host gone while we wait: no command to run
            except BaseException:
                os.close(self.fd)
                raise

    def __exit__(self, *exc: object) -> None:
        os.close(self.fd)  # releases the lock


def _run(spec: dict, workdir: str, execute) -> dict:
    result = {"fingerprint": _fingerprint(workdir)}
    missing = _missing_modules()
    if missing:
        result.update(status="setup", message=f"no {', '.join(missing)} in {sys.executable}")
        return result
    if spec["lock"] == "exclusive":  # no other run is alive: any folder is a killed agent's
        _remove_leftovers()  # (killed outright: an exec device's host, the OOM killer)
    os.makedirs(os.path.join(workdir, "tmp"), exist_ok=True)
    run_dir = tempfile.mkdtemp(prefix="run-", dir=os.path.join(workdir, "runs"))
    tmp = os.path.join(workdir, "tmp", os.path.basename(run_dir))
    try:
        os.makedirs(tmp, 0o700, exist_ok=True)  # the run's own TMPDIR, removed with its folder
        bundles = spec.get("bundles", {})
        for prefix, bundle in bundles.items():  # a folder with external data: regular files
            os.symlink(os.path.join(workdir, "bundles", bundle), os.path.join(run_dir, prefix))
        gone = _missing_blobs(spec)  # a device clean ran between the listing and this lock
        if gone:
            result.update(status="missing", missing=gone, workdir=workdir)
            return result
        used = [os.path.join("bundles", b) for b in bundles.values()]
        for path in used + [_stored(rel, digest, bundles) for rel, digest in spec["files"]]:
            os.utime(path)  # last use, for device clean --unused-for
        for rel, digest in spec["files"]:
            stored = os.path.join(workdir, _stored(rel, digest, bundles))
            if rel.split("/", 1)[0] in bundles:
                continue
            target = os.path.join(run_dir, rel)
            os.makedirs(os.path.dirname(target), exist_ok=True)
            os.symlink(stored, target)
        env = dict(os.environ, TMPDIR=tmp, PYTHONDONTWRITEBYTECODE="1")
        report = os.path.join(run_dir, "report.json")
        code, stderr = execute([*spec["argv"], "--json", report], run_dir, env)
        result.update(exit_code=code, stderr=stderr[-4000:].decode("utf-8", "replace"))
        size = os.path.getsize(report) if os.path.isfile(report) else -1
        if size > spec["max_report"]:
            result["message"] = f"its report is {size} bytes, over the cap of {spec['max_report']}"
        elif size >= 0:
            with open(report, encoding="utf-8") as f:
                result.update(status="ok", report=json.load(f))
        else:
            result["message"] = f"cr-edge wrote no report (exit {code})"
        return result
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
        shutil.rmtree(tmp, ignore_errors=True)


def _clean(spec: dict, workdir: str) -> dict:
    """Remove what pushes left (blobs, bundles) unused for ``unused_for`` seconds, and what
    killed runs left (``runs/``, ``tmp/``), under the exclusive lock: no command is using
    any of it. A bundle is renamed away before it is deleted, so no run sees half of one;
    a push in flight (``.part-*`` under an hour old) is left alone."""
    cutoff = time.time() - float(spec["unused_for"])
    removed, freed, kept = 0, 0, 0
    for name in sorted(os.listdir("blobs")):
        path = os.path.join("blobs", name)
        st = os.lstat(path)
        if name.startswith(".part-") and time.time() - st.st_mtime < 3600:
            continue
        if st.st_mtime <= cutoff or name.startswith(".part-"):
            os.unlink(path)
            removed, freed = removed + 1, freed + st.st_size
        else:
            kept += 1
    if os.path.isdir("bundles"):
        for name in sorted(os.listdir("bundles")):
            path = os.path.join("bundles", name)
            if not name.startswith(".trash-") and os.lstat(path).st_mtime > cutoff:
                kept += 1
                continue
            trash = path if name.startswith(".trash-") else f"bundles/.trash-{name}-{os.getpid()}"
            os.rename(path, trash)
            freed += _tree_size(trash)
            shutil.rmtree(trash, ignore_errors=True)
            removed += 1
    freed += _remove_leftovers()
    return {"status": "ok", "removed": removed, "freed": freed, "kept": kept}


def _remove_leftovers() -> int:
    """Remove what killed runs left in ``runs/`` and ``tmp/`` (of the workdir, the current
    folder); the bytes freed. Only under the exclusive lock: then no run is alive."""
    freed = 0
    for folder in ("runs", "tmp"):
        for name in os.listdir(folder) if os.path.isdir(folder) else []:
            path = os.path.join(folder, name)
            freed += _tree_size(path)
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path, ignore_errors=True)
            else:
                os.unlink(path)
    return freed


def _tree_size(path: str) -> int:
    if not os.path.isdir(path) or os.path.islink(path):
        return os.lstat(path).st_size
    total = 0
    for folder, _, names in os.walk(path):
        for name in names:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(folder, name)).st_size
    return total


def _fingerprint(workdir: str) -> dict:
    """``fingerprint`` (sent beside this script), providers cached per Python and boot."""
    info = fingerprint(workdir, runtime=False)  # noqa: F821 - defined by the host's bootstrap
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            boot = f.read().strip()
    except OSError:
        boot = ""
    key = [sys.executable, info.get("onnxruntime"), boot]
    cache = os.path.join(workdir, "fingerprint.json")
    try:
        with open(cache, encoding="utf-8") as f:
            cached = json.load(f)
        if cached.get("key") == key:
            info["providers"] = cached["providers"]
            return info
    except (OSError, ValueError, KeyError, AttributeError):
        pass
    full = fingerprint(workdir, runtime=True)  # noqa: F821
    tmp = f"{cache}.{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump({"key": key, "providers": full.get("providers")}, f)
    os.replace(tmp, cache)
    return full


def _setup(spec: dict, workdir: str) -> dict:
    """A venv in ``<workdir>/venv`` with the pushed wheels, unless its stamp says it has them."""
    venv = os.path.join(workdir, "venv")
    stamp_path = os.path.join(venv, "cr-edge-stamp.json")
    stamp = {"wheels": sorted(d for _, d in spec["files"]), "python": sys.executable}
    if not spec.get("force") and os.path.isfile(stamp_path):
        with open(stamp_path, encoding="utf-8") as f:
            try:
                if json.load(f) == stamp:
                    return {"status": "ok", "message": "up to date", "changed": False}
            except ValueError:
                pass
    house = tempfile.mkdtemp(prefix="wheels-", dir=workdir)
    try:
        for name, digest in spec["files"]:
            os.symlink(os.path.join(workdir, "blobs", digest), os.path.join(house, name))
        shutil.rmtree(venv, ignore_errors=True)
        steps = [
            ("venv", [sys.executable, "-m", "venv", "--without-pip", venv]),
            ("pip install", [
                os.path.join(venv, "bin", "python"),
                os.path.join(house, spec["pip_wheel"], "pip"),
                "install", "--no-index", "--find-links", house, "--no-cache-dir",
                "--disable-pip-version-check", "--quiet", *spec["requirements"],
            ]),
        ]  # fmt: skip
        env = dict(os.environ, TMPDIR=house, PIP_NO_INPUT="1")
        for what, step in steps:
            proc = subprocess.run(step, env=env, capture_output=True)
            if proc.returncode != 0:
                tail = (proc.stdout + proc.stderr).decode("utf-8", "replace").strip().splitlines()
                return {"message": f"{what} failed: {(tail or [''])[-1]}"}
        tmp = stamp_path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(stamp, f)
        os.replace(tmp, stamp_path)
        return {"status": "ok", "message": "installed", "changed": True}
    finally:
        shutil.rmtree(house, ignore_errors=True)
