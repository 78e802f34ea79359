"""Peak resident memory added by loading and running a model, measured by the OS.

Measured in a fresh child process, so that what the parent has already allocated
(other sessions, the timing samples, rich) does not hide it. In the child, after the
imports (the runtime's lazy ones too, see ``workload.preload``) and after the file
has been read and checked:

* Linux: the peak-RSS mark ``VmHWM`` is reset by writing ``5`` to
  ``/proc/self/clear_refs`` and read from ``/proc/self/status`` before loading, after
  loading, and after running; the figures are the rises of that peak.
* elsewhere (macOS), or when the reset is refused: ``resource.getrusage`` ``ru_maxrss``,
  the peak since the process started; import-time peaks can then hide part of the
  rise, and the method says so.

Run as ``python -m cr_edge.profile.memory JSON`` it prints one JSON line.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from cr_edge.artifacts.child import run_python

RUN_ITERS = 20  # enough runs for every buffer the run path allocates to be touched
TIMEOUT_S = 300
_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def measure_memory(runtime: str, file: Path, batch: int, threads: int | None) -> dict:
    """Run the child for one profile row; a failure comes back as ``{"error": why}``."""
    request = json.dumps(
        {"runtime": runtime, "file": str(file), "batch": batch, "threads": threads}
    )
    try:
        done = run_python(["-m", "cr_edge.profile.memory", request], TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return {"error": f"the memory probe took longer than {TIMEOUT_S} s"}
    if done.returncode != 0:
        lines = (done.stderr or done.stdout).strip().splitlines() or ["no output"]
        return {"error": f"the memory probe failed: {lines[-1]}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def _peak_kb() -> int:
    """Peak RSS in KiB: VmHWM where /proc has it, else ru_maxrss."""
    if _STATUS.is_file():
        for line in _STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak // 1024 if sys.platform == "darwin" else peak  # bytes on macOS, KiB on Linux


def _can_reset() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False where that is refused."""
    try:
        _CLEAR_REFS.write_text("5")
    except OSError:
        return False
    return True


def _child(request: dict) -> dict:
    from cr_edge.profile.workload import make_feeds, preload, with_threads
    from cr_edge.runtimes.registry import get_runtime
    from cr_edge.runtimes.safe_load import check_artifact

    runtime = with_threads(get_runtime(request["runtime"]), request["threads"])
    preload(runtime)
    artifact = check_artifact(Path(request["file"]))
    reset = _can_reset()
    base = _peak_kb()
    session = runtime.load(artifact)
    loaded = _peak_kb()
    feeds = make_feeds(session, request["batch"], artifact.path)
    for _ in range(RUN_ITERS):
        session.run(feeds)
    ran = _peak_kb()
    method = (
        "VmHWM reset via /proc/self/clear_refs, in a fresh process"
        if reset
        else "peak RSS since the child started (VmHWM or ru_maxrss; no reset possible), import peaks may hide part"
    )
    return {
        "method": method,
        "baseline_kb": base,
        "load_kb": max(0, loaded - base),
        "run_kb": max(0, ran - base),
    }


if __name__ == "__main__":
    print(json.dumps(_child(json.loads(sys.argv[1]))))
