"""``cr-edge profile``: latency, memory and per-op cost of artifacts on this machine.

One row per (artifact, runtime, batch, threads), each from a fresh session: file
size, load time, first-inference time, the latency distribution and throughput of
``iters`` timed runs after ``warmup`` untimed ones, the peak RSS added by loading
and running (``memory``), and with ``per_op`` onnxruntime's profiler (``perop``).
Several artifacts are measured interleaved (``timing``) and each is compared with
the first, per round, so the ratio holds on a noisy machine. numpy + onnxruntime
only: this runs on the edge box itself.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from cr_edge import __version__
from cr_edge.errors import InputError
from cr_edge.profile.device import describe_device
from cr_edge.profile.limit import floor_artifact, flops_per_sample, split
from cr_edge.profile.memory import measure_memory
from cr_edge.profile.perop import profile_ops
from cr_edge.profile.timing import Runner, latency_stats, measure, ratio_stats
from cr_edge.profile.workload import fast_call, make_feeds, preload, with_threads
from cr_edge.runtimes.executorch import ExecuTorchRuntime, floor_of
from cr_edge.runtimes.ort import OrtRuntime
from cr_edge.runtimes.registry import ALL, parse_runtimes
from cr_edge.runtimes.runtime import RunError, Runtime, Session, Unavailable
from cr_edge.runtimes.safe_load import Artifact, check_artifact
from cr_edge.runtimes.sandbox import sandboxed_load

PER_OP_RUNS = 200  # profiled runs: enough for stable shares, a trace of a few MB at most
Progress = Callable[[str, float], None]  # (what is being measured, fraction done)


@dataclass(frozen=True)
class ProfileOptions:
    """What to measure; checked on construction so that bad values fail before any work."""

    runtimes: str = "cpu"  # "cpu", "cpu,ort-mobile" or "all"
    batches: tuple[int, ...] = (1,)
    threads: tuple[int | None, ...] = (None,)  # None: the runtime's default pool
    warmup: int = 50  # untimed runs after the first: caches, lazy kernel set-up, CPU clocks
    iters: int = 1000
    seconds: float | None = None  # measure for this long instead of ``iters`` runs
    per_op: bool = False
    memory: bool = True
    floor: bool = True  # time an arithmetic-free twin of each model alongside it (``limit``)
    top: int = 10  # per-op rows shown

    def __post_init__(self) -> None:
        if not self.batches or min(self.batches) < 1:
            raise InputError(f"--batch {self.batches}: give positive sizes such as 1,8,64")
        if any(t is not None and t < 1 for t in self.threads):
            raise InputError(f"--threads {self.threads}: give a positive count or 'all'")
        if self.warmup < 0 or self.iters < 1:
            raise InputError("--warmup must be >= 0 and --iters >= 1")
        if self.seconds is not None and self.seconds <= 0:
            raise InputError(f"--seconds {self.seconds}: give a positive duration")


@dataclass
class Row:
    """One (artifact, runtime, batch, threads) measurement; times in ms, memory in KiB."""

    artifact: str
    file: str
    runtime: str
    batch: int
    threads: int | None
    size_bytes: int
    load_ms: float
    first_ms: float
    latency: dict[str, float]
    memory: dict | None = None
    ops: dict | None = None
    limit: dict | None = None  # FLOPs, GFLOP/s, dispatch floor and shares (``limit.split``)
    samples_ns: list[int] = field(default_factory=list, repr=False)  # for plots, not JSON


@dataclass
class ProfileReport:
    """Everything one ``profile`` call measured, with the device it ran on."""

    device: dict
    options: ProfileOptions
    rows: list[Row] = field(default_factory=list)
    comparisons: list[dict] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)

    def to_json(self) -> dict:
        rows = [{k: v for k, v in asdict(r).items() if k != "samples_ns"} for r in self.rows]
        return {
            "cr_edge": __version__,
            "device": self.device,
            "options": asdict(self.options),
            "timing": (
                "perf_counter_ns around each run call only: onnxruntime's run_with_iobinding "
                "with the inputs bound once; other runtimes' Session.run"
            ),
            "results": rows,
            "comparisons": self.comparisons,
            "skipped": self.skipped,
        }


def thread_counts(given: str | tuple[int, ...] | None) -> tuple[int | None, ...]:
    """None -> the runtime default; ``"all"`` -> 1, 2, 4, ... up to the usable cores; counts as given."""
    if given is None:
        return (None,)
    if given == ALL:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        counts = [n for n in (1, 2, 4, 8, 16, 32, 64) if n < (cores or 1)]
        return (*counts, cores or 1)
    if isinstance(given, str):
        raise InputError(f"--threads {given!r}: give positive counts such as (1, 4), or 'all'")
    return tuple(given)


def profile(
    paths: list[Path], options: ProfileOptions, progress: Progress | None = None
) -> ProfileReport:
    """Measure every artifact on every runtime, batch and thread count in ``options``.

    A runtime asked for by name that cannot run here is an ``InputError`` with its
    reason; under ``all`` it is recorded in ``skipped`` and the others go on.
    """
    if not paths:
        raise InputError("give at least one artifact (.onnx, .ort or .pte)")
    for path in paths:
        sandboxed_load(Path(path))  # a crash inside onnxruntime becomes an error, not a signal
    given = [check_artifact(Path(p)) for p in paths]
    named = ALL not in [n.strip() for n in options.runtimes.split(",")]
    report = ProfileReport(describe_device(), options)
    for runtime in parse_runtimes(options.runtimes):
        try:
            files = _loadables(runtime, given)
            for threads in options.threads:
                sized = with_threads(runtime, threads)
                for batch in options.batches:
                    _measure_setting(report, sized, given, files, batch, threads, progress)
        except Unavailable as e:
            if named:
                raise InputError(f"runtime {runtime.name}: {e}") from e
            report.skipped.append({"runtime": runtime.name, "reason": str(e)})
    return report


def _loadables(runtime: Runtime, given: list[Artifact]) -> list[Artifact]:
    """The file ``runtime`` runs for each artifact (``model.ort`` for ``model.onnx`` on mobile).

    Then imports the runtime's lazily imported library, which is no part of a model's load.
    """
    ok, why = runtime.available()
    if not ok:
        raise Unavailable(why)
    files = []
    for artifact in given:
        loadable = runtime.loadable(artifact.path)
        files.append(artifact if loadable == artifact.path else check_artifact(loadable))
    try:
        preload(runtime)
    except ImportError as e:
        raise Unavailable(f"{runtime.name} cannot import its library ({e})") from e
    return files


@dataclass
class _Loaded:
    """A fresh session ready to time: its row (figures so far), fast call and inputs."""

    row: Row
    session: Session  # kept alive: ORT-format models run from its bytes in place
    runner: Runner
    feeds: dict[str, np.ndarray]
    estimate_ns: float  # one run's latency from the warmup, to size timed rounds


def _load(
    runtime: Runtime,
    artifact: Artifact,
    file: Artifact,
    batch: int,
    threads: int | None,
    warmup: int,
) -> _Loaded:
    """Load ``file`` fresh, time the load and the first inference, then warm it up."""
    start = time.perf_counter_ns()
    session = runtime.load(file)
    load_ms = (time.perf_counter_ns() - start) / 1e6
    feeds = make_feeds(session, batch, file.path)
    start = time.perf_counter_ns()
    try:
        session.run(feeds)
    except RunError as e:
        raise InputError(f"{file.path}: {runtime.name} cannot run batch {batch} ({e})") from e
    first_ns = time.perf_counter_ns() - start
    fn, arg = fast_call(session, feeds)
    start = time.perf_counter_ns()
    for _ in range(warmup):
        fn(arg)
    estimate = (time.perf_counter_ns() - start) / warmup if warmup else first_ns
    row = Row(
        str(artifact.path),
        str(file.path),
        runtime.name,
        batch,
        threads,
        len(file.data),
        load_ms,
        first_ns / 1e6,
        {},
    )
    return _Loaded(row, session, (fn, arg), feeds, estimate)


def _floors(
    runtime: Runtime, loaded: list[_Loaded], batch: int, threads: int | None, options
) -> list[_Loaded | None]:
    """Per model, its arithmetic-free twin loaded by the same runtime, or None.

    onnxruntime's twin is written here (``limit.floor_artifact``). An ExecuTorch program's
    needs torch's exporter, which ``profile`` does not carry, so export writes it beside
    the program (``X.floor.pte``, ``cr_edge.export.pte.export_floor``); a program without
    one has no floor. The twin runs on the program's thread count: the pool is global.
    """
    if isinstance(runtime, ExecuTorchRuntime):
        twins = []
        for m in loaded:
            path = floor_of(Path(m.row.file))
            pool = replace(runtime, threads=runtime.threads_for(m.row.size_bytes))
            twin = check_artifact(path) if path.is_file() else None
            twins.append(twin and _load(pool, twin, twin, batch, threads, options.warmup))
        return twins
    if not isinstance(runtime, OrtRuntime):
        return [None] * len(loaded)
    floors = []
    with tempfile.TemporaryDirectory(prefix="cr-edge-floor-") as folder:
        for k, m in enumerate(loaded):
            twin = floor_artifact(m.session, m.feeds, Path(folder) / f"floor{k}.onnx")
            floors.append(_load(runtime, twin, twin, batch, threads, options.warmup))
    return floors


def _measure_setting(
    report: ProfileReport,
    runtime: Runtime,
    given: list[Artifact],
    files: list[Artifact],
    batch: int,
    threads: int | None,
    progress: Progress | None,
) -> None:
    """Measure every artifact interleaved at one setting, then its memory and per-op cost."""
    options = report.options
    loaded = [
        _load(runtime, a, f, batch, threads, options.warmup)
        for a, f in zip(given, files, strict=True)
    ]
    floors = _floors(runtime, loaded, batch, threads, options) if options.floor else []
    runners = [m.runner for m in loaded]
    slot = {}  # model k -> where its floor's samples are among the runners
    for k, twin in enumerate(floors):
        if twin is not None:
            slot[k] = len(runners)
            runners.append(twin.runner)
    label = f"{runtime.name} batch {batch} threads {threads or 'default'}"
    timings = measure(
        runners,
        options.iters,
        options.seconds,
        max(m.estimate_ns for m in loaded),
        (lambda f: progress(label, f)) if progress else None,
    )
    for k, m in enumerate(loaded):
        m.row.samples_ns = timings.samples_ns[k]
        m.row.latency = latency_stats(m.row.samples_ns, batch)
        if k in slot:
            floor_ms = float(np.median(timings.samples_ns[slot[k]])) / 1e6
            flops = flops_per_sample(files[k])
            m.row.limit = split(m.row.latency["p50_ms"], floor_ms, flops, batch)
        if options.memory:
            m.row.memory = measure_memory(runtime.name, Path(m.row.file), batch, threads)
        if options.per_op:
            runs = min(options.iters, PER_OP_RUNS)
            try:
                m.row.ops = profile_ops(runtime, files[k], m.feeds, runs, options.top)
            except Unavailable as e:
                m.row.ops = {"error": str(e)}
        report.rows.append(m.row)
    for k in range(1, len(loaded)):
        stats = ratio_stats(timings.round_medians(0), timings.round_medians(k))
        report.comparisons.append(
            {
                "runtime": runtime.name,
                "batch": batch,
                "threads": threads,
                "base": loaded[0].row.file,
                "other": loaded[k].row.file,
                **stats,
            }
        )
