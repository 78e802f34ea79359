"""What one profile row runs: a runtime at a thread count, inputs at a batch, a fast call.

Kept apart from ``profile`` so that the memory child process (``memory``) builds
exactly the same session and inputs as the timed run does.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from cr_edge.artifacts import metadata as schema
from cr_edge.data.tokenizer import Tokenizer
from cr_edge.errors import InputError
from cr_edge.runtimes.executorch import ExecuTorchRuntime, ExecuTorchSession
from cr_edge.runtimes.ort import OrtRuntime, OrtSession
from cr_edge.runtimes.runtime import Runtime, Session, Unavailable

XNNPACK_THREADS = "intra_op_num_threads"  # XNNPACK runs its own pool, set per provider
# Libraries a runtime imports on its first load (ExecuTorch: torch, seconds and hundreds
# of MiB): imported before anything is measured, as an app has them loaded at start-up.
PRELOAD = {"executorch-xnnpack": ("torch", "executorch.extension.pybindings.portable_lib")}


def preload(runtime: Runtime) -> None:
    """Import what ``runtime.load`` would import lazily, so load time and RSS are the model's."""
    for module in PRELOAD.get(runtime.name, ()):
        importlib.import_module(module)


def with_threads(runtime: Runtime, threads: int | None) -> Runtime:
    """``runtime`` using ``threads`` intra-op threads; None keeps the runtime's own default.

    For XNNPACK the EP's pool is the one that computes (ORT's pool stays at one thread,
    as ``ort_runtimes`` sets it up), so the count goes into its provider options.
    """
    if threads is None:
        return runtime
    if isinstance(runtime, ExecuTorchRuntime):
        return dataclasses.replace(runtime, threads=threads)
    if not isinstance(runtime, OrtRuntime):
        raise Unavailable(f"{runtime.name} does not take a thread count (omit --threads)")
    if XNNPACK_THREADS in runtime.provider_options:
        options = {**runtime.provider_options, XNNPACK_THREADS: str(threads)}
        return dataclasses.replace(runtime, provider_options=options)
    return dataclasses.replace(runtime, intra_op_threads=threads)


def make_feeds(session: Session, batch: int, file: Path) -> dict[str, np.ndarray]:
    """Random inputs (seeded) of ``batch`` samples; ``InputError`` if the shapes cannot take it.

    A text model's ids are drawn from its vocabulary, every position filled (no padding):
    the Gather and the mean then do their full work.

    onnxruntime reports the model's shapes exactly. ExecuTorch reports memory-planned
    sizes, which for a dynamic batch are its upper bound: any batch up to it may run,
    and the first run says whether it does.
    """
    exact = isinstance(session, OrtSession)
    rng = np.random.default_rng(0)
    vocab = _vocab(session)
    feeds = {}
    for spec in session.inputs:
        if not spec.shape:
            raise InputError(f"{file}: input {spec.name!r} is a scalar; profile needs a batch axis")
        first = spec.shape[0]
        if isinstance(first, int) and first != batch and (exact or batch > first):
            what = "a fixed batch" if exact else "memory planned for a batch"
            raise InputError(
                f"{file}: input {spec.name!r} has {what} of {first}; --batch {batch} "
                f"cannot run on it (use --batch {first}, or export without --fixed-batch)"
            )
        rest = spec.shape[1:]
        loose = [i + 1 for i, d in enumerate(rest) if not isinstance(d, int)]
        if loose:
            raise InputError(
                f"{file}: input {spec.name!r} has dynamic axis {loose[0]} ({spec.shape}); "
                "profile needs every axis but the batch fixed (export with a fixed input shape)"
            )
        shape = (batch, *rest)
        if spec.dtype.kind == "f":
            feeds[spec.name] = rng.standard_normal(shape).astype(spec.dtype)
        elif spec.dtype.kind in "iu" and vocab:  # token ids: every position a real id
            feeds[spec.name] = rng.integers(1, vocab, size=shape).astype(spec.dtype)
        else:
            feeds[spec.name] = np.zeros(shape, spec.dtype)
    return feeds


def _vocab(session: Session) -> int:
    """Rows of a text model's embedding table (from ``cr_edge.data.tokenizer``); 0 otherwise."""
    tokenizer = schema.read(session.metadata, "model").tokenizer
    if not tokenizer:
        return 0
    try:
        return Tokenizer.from_json(tokenizer).vocab
    except (InputError, TypeError, ValueError) as e:
        raise InputError(f"metadata {schema.key('tokenizer')} {tokenizer!r}: {e}") from e


def fast_call(session: Session, feeds: dict[str, np.ndarray]) -> tuple[Callable[[Any], Any], Any]:
    """``(fn, arg)`` such that ``fn(arg)`` runs the model once with as little Python as possible.

    For onnxruntime the inputs are bound once with IOBinding and the outputs left in
    ORT's buffers, as an app in C++/Java would run: ``InferenceSession.run`` converts
    feeds and copies outputs in Python, which took digits-cr from 5.2 to 8.2 µs here.
    """
    if isinstance(session, ExecuTorchSession):
        return session.bound(feeds)
    if not isinstance(session, OrtSession):
        return session.run, feeds
    raw = session.inference_session
    binding = raw.io_binding()
    for name, value in feeds.items():
        binding.bind_cpu_input(name, value)
    for name in session.output_names:
        binding.bind_output(name)
    return raw.run_with_iobinding, binding
