"""Running a fight's independent tasks: inline, in a local process pool, or on a Ray cluster.

Every finished task's record is written atomically to ``records/<key>.json`` by the
driver as soon as it arrives, so an interrupted fight loses at most the tasks that
were running, and a rerun skips every task whose record is on disk. Workers only
compute (``runner.run_task``): a Ray cluster needs no disk shared with the driver.

Each record also carries the code version it was trained by (``code_version``): a
digest of the training path's source. A record whose digest differs from this
checkout's was made by other training code, so it is trained again, unless the
caller asks to reuse stale records (``--reuse-stale``), and the fight counts them.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

from cr_edge.artifacts import atomic
from cr_edge.errors import InputError
from cr_edge.fairfight.ladder import Task
from cr_edge.fairfight.runner import run_group, run_task, stackable
from cr_edge.fairfight.stacked import stack_shape

# (finished so far, total, name of the task just finished or None at the start)
Progress = Callable[[int, int, str | None], None]

# The training path, relative to the cr_edge package: what a run's record is a function of,
# beyond its task. Folders count with every .py file under them. recipe.py holds the
# training defaults, which a task's key leaves out (``ladder._settings``), and
# task_metrics.py the figures a record holds.
TRAINING_PATH = (
    "train",
    "nets.py",
    "poly.py",
    "dreg.py",
    "heads.py",
    "data",
    "recipe.py",
    "task_metrics.py",
    "fairfight/runner.py",
    "fairfight/stacked.py",
)


@functools.cache
def code_version() -> str:
    """A digest (16 hex digits) of the training path's source files: names and bytes.

    A change to any of them may change what a run trains to, so a record made under
    another digest is stale. Comments and docstrings count too: the digest errs towards
    retraining, never towards reusing a record of other code.
    """
    root = Path(__file__).resolve().parents[1]
    files: list[Path] = []
    for name in TRAINING_PATH:
        path = root / name
        files += sorted(path.rglob("*.py")) if path.is_dir() else [path]
    h = hashlib.sha256()
    for path in files:
        h.update(path.relative_to(root).as_posix().encode() + b"\0")
        h.update(path.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def default_workers() -> int:
    """The cores this process may use: the embedded default for ``--workers``."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


@dataclass(frozen=True)
class Engine:
    """Where tasks run: ``workers`` local processes, or the Ray cluster at ``ray``."""

    workers: int = 1
    ray: str | None = None  # an address, or "auto" for the cluster this machine belongs to
    # runs of one phase and shape (family, arch, width, ...) trained as one stack
    # (``runner.run_group``); False: one run per task
    stacked: bool = True

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise InputError(f"--workers {self.workers}: give a positive number of processes")


class RecordStore:
    """One JSON file per finished task; a record counts only if it belongs to the same task
    and was trained by this code version (or ``reuse_stale`` says any version will do)."""

    def __init__(self, folder: Path, code: str | None = None, reuse_stale: bool = False) -> None:
        self.folder = Path(folder)
        self.code = code or code_version()
        self.reuse_stale = reuse_stale
        self.stale: set[str] = set()  # keys of records found under another code version

    def path(self, task: Task) -> Path:
        return self.folder / f"{task.key}.json"

    def get(self, task: Task) -> dict | None:
        try:
            stored = json.loads(self.path(task).read_text(encoding="utf-8"))
            # read back as a Task: a recipe field added since takes its default
            same = Task.from_json(stored["task"]) == task
        except (OSError, ValueError, KeyError, TypeError, InputError):
            return None  # absent, unreadable, or of a recipe this version cannot read: rerun
        if not same:
            return None
        if stored.get("code") != self.code:  # a record from before digests is stale too
            self.stale.add(task.key)
            if not self.reuse_stale:
                return None
        return stored["record"]

    def put(self, task: Task, record: dict) -> None:
        atomic.write_json(
            self.path(task), {"task": task.to_json(), "code": self.code, "record": record}
        )


def execute(
    tasks: list[Task], store: RecordStore, workers: Workers, progress: Progress | None = None
) -> tuple[list[dict], int]:
    """Every task's record, in task order, and how many of them were run (not reused)."""
    records: dict[str, dict] = {}
    todo = []
    for task in tasks:
        done = store.get(task)
        if done is None:
            todo.append(task)
        else:
            records[task.key] = done
    total = len(tasks)
    if progress:
        progress(len(records), total, None)
    for task, record in workers.run(todo):
        store.put(task, record)
        records[task.key] = record
        if progress:
            progress(len(records), total, task.key)
    return [records[t.key] for t in tasks], len(todo)


class Workers:
    """The engine's processes, started on first use and kept for every phase of a fight:
    a spawned worker pays for importing torch once, not once per phase."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._pool: ProcessPoolExecutor | None = None
        self._ray = None

    def __enter__(self) -> Workers:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
        if self._ray is not None:
            self._ray.shutdown()

    def run(self, tasks: list[Task]) -> Iterator[tuple[Task, dict]]:
        if not tasks:
            return iter(())
        units = work_units(tasks, self.engine.stacked)
        if self.engine.ray:
            return self._on_ray(units)
        if self.engine.workers == 1:
            return (
                pair for stack, unit in units for pair in zip(unit, _call(stack, unit), strict=True)
            )
        return self._in_pool(units)

    def _in_pool(self, units: list[Unit]) -> Iterator[tuple[Task, dict]]:
        if self._pool is None:
            self._pool = local_pool(self.engine.workers)
        # the largest stacks first: a long one started last would leave a core idle at the end
        pending = {
            self._pool.submit(_run_unit, _jsons(u), stack): u for stack, u in _longest_first(units)
        }
        try:
            while pending:
                finished, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in finished:
                    unit = pending.pop(future)
                    yield from zip(unit, future.result(), strict=True)
        finally:
            for future in pending:
                future.cancel()

    def _on_ray(self, units: list[Unit]) -> Iterator[tuple[Task, dict]]:
        ray = self._connect()
        remote = ray.remote(num_cpus=1)(_run_unit)
        pending = {remote.remote(_jsons(u), stack): u for stack, u in _longest_first(units)}
        try:
            while pending:
                finished, _ = ray.wait(list(pending), num_returns=1)
                for ref in finished:
                    unit = pending.pop(ref)
                    yield from zip(unit, ray.get(ref), strict=True)
        finally:
            for ref in pending:
                ray.cancel(ref)

    def _connect(self):
        if self._ray is not None:
            return self._ray
        try:
            import ray
        except ImportError as e:
            raise InputError(
                f"--ray needs the ray package ({e}); pip install 'cr-edge[cluster]'"
            ) from e
        address = self.engine.ray
        try:
            ray.init(address=address, include_dashboard=False, log_to_driver=False)
        except (ConnectionError, ValueError, RuntimeError) as e:
            raise InputError(
                f"--ray {address}: cannot connect to a Ray cluster ({e}); start one with "
                "`ray start --head` or give its address"
            ) from e
        self._ray = ray
        return ray


def local_pool(workers: int) -> ProcessPoolExecutor:
    """``workers`` spawned processes (not forked: forking a parent that runs torch's thread
    pools can deadlock) that exit when this process does, however it ends."""
    return ProcessPoolExecutor(
        max_workers=workers,
        mp_context=get_context("spawn"),
        initializer=_exit_with_parent,
        initargs=(os.getpid(),),
    )


def _exit_with_parent(parent: int) -> None:
    """A pool worker's start: a thread that ends the worker once the fight's driver is gone.

    Ctrl-C reaches every process of the terminal's group, but a driver ended on its own
    (``kill``, a closed session, an OOM kill) would leave its workers training for nothing,
    holding the cores, until their current stack ends; on a cluster node, for hours."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


# One worker call: whether it is a stack (``runner.run_group``), and its tasks.
Unit = tuple[bool, list[Task]]


def work_units(tasks: list[Task], stacked: bool = True) -> list[Unit]:
    """What one worker call trains: with ``stacked``, the stackable tasks
    (``runner.stackable``) of one phase and one recipe shape (``stacked.stack_shape``: a
    family, architecture and width; a probe's data fraction and epochs too) as one stack,
    trained together; every other task alone. Records stay one per task, under the task's
    own key."""
    units: dict[tuple, Unit] = {}
    for i, t in enumerate(tasks):
        stack = stacked and stackable(t)
        key = (t.phase, stack_shape(t.recipe)) if stack else (i,)
        units.setdefault(key, (stack, []))[1].append(t)
    return list(units.values())


def _jsons(unit: list[Task]) -> list[dict]:
    return [t.to_json() for t in unit]


def _longest_first(units: list[Unit]) -> list[Unit]:
    return sorted(units, key=lambda u: len(u[1]), reverse=True)


def _call(stack: bool, unit: list[Task]) -> list[dict]:
    return _run_unit(_jsons(unit), stack)


def _run_unit(task_jsons: list[dict], stack: bool) -> list[dict]:
    """One worker call: a stack (``run_group``) or a single run (``run_task``)."""
    return run_group(task_jsons) if stack else [run_task(task_jsons[0])]
