"""The ExecuTorch runtime: a ``.pte`` program with the XNNPACK delegate.

ExecuTorch's Python runtime takes and returns torch tensors, so this is the one
place in ``cr_edge.runtimes`` that imports torch — lazily, when a ``.pte`` is
loaded, never when the package is imported. ``available()`` only looks for the
packages (importing ExecuTorch costs seconds); a broken install shows up as
UNAVAILABLE when loading.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cr_edge.artifacts import metadata as schema
from cr_edge.errors import InputError
from cr_edge.runtimes.runtime import RunError, Runtime, Session, TensorSpec, Unavailable
from cr_edge.runtimes.safe_load import Artifact, one_line

SIDECAR_FORMAT = "cr-edge-pte-info"

# A program this small (fp32 bytes: 4 per parameter, so ~1M parameters) runs a few tiny
# kernels per call: XNNPACK's second thread only adds a hand-off and, on a loaded machine,
# spin-waits that cost more than the call (as ``cr_edge.train.loop.SINGLE_THREAD_BELOW``).
SINGLE_THREAD_BELOW_BYTES = 4_000_000
FLOOR_TAG = ".floor"

# c10::ScalarType codes reported by ExecuTorch's TensorInfo.dtype()
SCALAR_TYPES = {
    0: np.uint8,
    1: np.int8,
    3: np.int32,
    4: np.int64,
    5: np.float16,
    6: np.float32,
    7: np.float64,
    11: np.bool_,
}


@dataclass(frozen=True)
class ExecuTorchRuntime(Runtime):
    """Runs the ``forward`` method of an ExecuTorch program."""

    name: str = "executorch-xnnpack"
    suffixes: tuple[str, ...] = (".pte",)
    backend: str = "XnnpackBackend"
    threads: int | None = None  # None: one thread below SINGLE_THREAD_BELOW_BYTES, else all

    def available(self) -> tuple[bool, str]:
        for module in ("torch", "executorch"):
            if not _installed(module):
                return False, f"{module} is not installed (pip install 'cr-edge[executorch]')"
        return True, ""

    def threads_for(self, program_bytes: int) -> int:
        """The pool size a program of this size runs with (``threads``, or by its size)."""
        if self.threads is not None:
            return self.threads
        return 1 if program_bytes < SINGLE_THREAD_BELOW_BYTES else os.cpu_count() or 1

    def load(self, artifact: Artifact) -> Session:
        ok, why = self.available()
        if not ok:
            raise Unavailable(why)
        try:
            import torch
            from executorch.extension.pybindings import portable_lib
        except ImportError as e:
            raise Unavailable(f"ExecuTorch cannot be imported ({one_line(e)})") from e
        if not portable_lib._is_available(self.backend):
            raise Unavailable(f"this ExecuTorch build has no {self.backend}")
        _set_threads(self.threads_for(len(artifact.data)))
        try:
            with _native_stderr_silenced():
                program = portable_lib._load_program_from_buffer(
                    artifact.data,
                    program_verification=portable_lib.Verification.InternalConsistency,
                )
                method = program.load_method("forward")
        except (RuntimeError, ValueError) as e:
            raise InputError(f"{artifact.path}: {self.name} cannot load it ({one_line(e)})") from e
        session = ExecuTorchSession(method, torch, (artifact.data, program))
        session.metadata = sidecar_metadata(artifact.path)
        return session


def floor_of(path: Path) -> Path:
    """``model.floor.pte`` for ``model.pte``: the program's arithmetic-free twin, written by
    export for ``profile``'s dispatch floor (profile cannot build one: that takes torch)."""
    return path.with_name(f"{path.stem}{FLOOR_TAG}{path.suffix}")


def sidecar_of(path: Path) -> Path:
    """``model.pte.json`` for ``model.pte``: the program's batch contract and metadata."""
    return path.with_name(path.name + ".json")


def sidecar_metadata(path: Path) -> dict[str, str]:
    """The sidecar's ``metadata`` (older sidecars: their ``precision``); {} without a sidecar.

    A sidecar that is there but unreadable is an input error: guessing fp32 for an int8
    program would fail it against the wrong tolerance.
    """
    info_path = sidecar_of(path)
    if not info_path.is_file():
        return {}
    try:
        info = json.loads(info_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(f"{info_path}: not a readable sidecar ({one_line(e)}); re-export") from e
    if isinstance(info, dict) and info.get("format") == SIDECAR_FORMAT:
        meta = info.get("metadata", schema.props(precision=info.get("precision", "fp32")))
        if isinstance(meta, dict):
            return {str(k): str(v) for k, v in meta.items()}
    raise InputError(f"{info_path}: not a {SIDECAR_FORMAT} sidecar with 'metadata'; re-export")


def _set_threads(threads: int) -> None:
    """Size ExecuTorch's one process-wide threadpool (XNNPACK computes on it) for a program.

    The pool is global, so the last program loaded decides it; an app sets it once at start.
    """
    from executorch.extension.pybindings import portable_lib

    with _native_stderr_silenced():  # the pool's creation probes cpuinfo; every reset logs
        if portable_lib._threadpool_get_thread_count() != threads:
            portable_lib._unsafe_reset_threadpool(threads)


@contextlib.contextmanager
def _native_stderr_silenced() -> Iterator[None]:
    """XNNPACK's cpuinfo prints probe failures (``midr file``) from C++ on every first load;
    they say nothing about the model. Failures still arrive as exceptions."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


class ExecuTorchSession(Session):
    """A loaded ``forward`` method; inputs are named ``x``... and outputs ``y``... by position.

    It drives ExecuTorch's own method binding (``portable_lib``), not the
    ``executorch.runtime`` wrapper, whose ``execute`` always clones the outputs: here
    each output is copied once, into the numpy array the caller gets. Programs from
    ``cr_edge.export.pte`` leave the inputs to the caller (not memory-planned), so
    setting an input binds the caller's buffer rather than copying it; the method then
    reads that buffer on every execute, and the session keeps it alive until the next
    call binds another.

    ExecuTorch reports memory-planned sizes, which for a dynamic batch are its upper
    bound; ``run_all`` therefore feeds full planned batches, padded.
    """

    def __init__(self, method, torch, owner=None) -> None:
        self._owner = owner  # the method runs from the program and its bytes: keep them alive
        self._method = method
        self._torch = torch
        self._inputs: list = []  # what the method is bound to now
        meta = method.method_meta()
        self.inputs = [
            _spec("x" if i == 0 else f"input{i}", meta.input_tensor_meta(i))
            for i in range(meta.num_inputs())
        ]
        self.outputs = [
            _spec("y" if i == 0 else f"output{i}", meta.output_tensor_meta(i))
            for i in range(meta.num_outputs())
        ]
        self.metadata = {}

    def bound(self, feeds: dict[str, np.ndarray]) -> tuple:
        """``(fn, arg)``: ``fn(arg)`` runs once on ``feeds`` bound once, outputs left in place.

        The counterpart of onnxruntime's IOBinding, for timing: the inputs are bound once
        (the caller's buffers, as ``bind_cpu_input``), and the outputs stay in the
        method's planned buffers, reused by every call (as IOBinding's are). A ``run`` in
        between binds other inputs, so ``fn`` binds its own again when it finds them gone.
        """
        tensors = self._tensors(feeds)
        self._bind(tensors)
        execute = self._method.execute

        def run_bound(_: object) -> None:
            if self._inputs is not tensors:
                self._bind(tensors)
            execute()

        return run_bound, None

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        tensors = self._inputs = self._tensors(feeds)  # alive while the method points at them
        try:
            outputs = self._method.call(tensors, False)  # not cloned: copied below, once
        except RuntimeError as e:
            raise RunError(one_line(e)) from e
        # Outputs live in memory-planned buffers that the next execute overwrites.
        return [o.numpy().copy() for o in outputs]

    def _tensors(self, feeds: dict[str, np.ndarray]) -> list:
        return [self._torch.from_numpy(np.ascontiguousarray(feeds[n])) for n in self.input_names]

    def _bind(self, tensors: list) -> None:
        self._method.set_inputs(tensors)
        self._inputs = tensors


def _spec(name: str, info) -> TensorSpec:
    return TensorSpec(name, tuple(info.sizes()), np.dtype(SCALAR_TYPES.get(info.dtype(), object)))


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # ValueError: a module shimmed to None in sys.modules
        return False
