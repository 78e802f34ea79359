"""The fuzz loop of row 2: mutated model, oracle, checkpoint and data files through every loader.

ONNX Runtime's own fuzzing counts only signals and sanitizer faults as bugs: an
exception is a correct answer to garbage. cr-edge holds itself to more: the answer
must be a typed ``CrEdgeError`` with a one-line message (what the CLI prints, exit
2), or a successful load. Anything else — another exception type, a multi-line
message, a case slower than ``HANG_S`` — is counted as a crash.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cr_edge.errors import CrEdgeError

HANG_S = 10.0


def mutate(data: bytes, rng: np.random.Generator) -> bytes:
    """One random corruption: truncation, bit flips, overwritten or inserted or deleted bytes."""
    n = len(data)
    kind = rng.integers(6)
    if kind == 0:  # truncated, as by a full disk or a killed copy
        return data[: rng.integers(0, max(n, 1))]
    buf = bytearray(data)
    if kind == 1:  # bit flips, as by a bad disk or a transfer error
        for _ in range(rng.integers(1, 9)):
            i = rng.integers(n)
            buf[i] ^= 1 << rng.integers(8)
        return bytes(buf)
    start = int(rng.integers(n))
    size = int(rng.integers(1, 64))
    noise = rng.integers(0, 256, size, dtype=np.uint8).tobytes()
    if kind == 2:
        buf[start : start + size] = noise[: n - start]
    elif kind == 3:
        buf[start:start] = noise
    elif kind == 4:
        del buf[start : start + size]
    else:  # random bytes of a similar size: a file of another type, or garbage
        return rng.integers(0, 256, max(n // 4, 1), dtype=np.uint8).tobytes()
    return bytes(buf)


@dataclass
class Tally:
    """What one kind of file did under fuzzing."""

    cases: int = 0
    refused: int = 0  # typed cr-edge error, one line
    loaded: int = 0
    slowest_s: float = 0.0
    crashes: list[str] = field(default_factory=list)


Target = tuple[Path, Callable[[Path], object]]  # (the file to mutate, the loader to call)


def targets(checkpoint: Path, exported: Path, work: Path) -> dict[str, Target]:
    """Each kind of file the battery fuzzes: a pristine copy under ``work`` and its loader."""
    from cr_edge import data
    from cr_edge.checkpoint import load_checkpoint
    from cr_edge.runtimes.registry import get_runtime
    from cr_edge.runtimes.safe_load import check_artifact
    from cr_edge.validate.oracle import load_oracle

    work.mkdir(parents=True, exist_ok=True)
    cpu = get_runtime("cpu")
    ck = work / "checkpoint"
    shutil.copytree(checkpoint, ck, dirs_exist_ok=True)
    (ck / "manifest.json").unlink(missing_ok=True)  # fuzz the loaders, not the manifest check
    rng = np.random.default_rng(0)
    x = rng.normal(size=(12, 3)).round(3)
    rows = ["a,b,c,label", *(f"{r[0]},{r[1]},{r[2]},{i % 2}" for i, r in enumerate(x))]
    (work / "data.csv").write_text("\n".join(rows) + "\n")
    images = np.arange(6 * 4 * 4, dtype=np.uint8).tobytes()
    (work / "images.idx").write_bytes(bytes.fromhex("00000803") + _dims(6, 4, 4) + images)
    (work / "labels.idx").write_bytes(bytes.fromhex("00000801") + _dims(6) + bytes([0, 1] * 3))
    (work / "data.npz").write_bytes(_npz(x=x.astype(np.float32), y=np.arange(12) % 2))
    for name in ("model.onnx", "model.ort", "model.ref.npz"):
        shutil.copyfile(exported / name, work / name)
    return {
        "onnx": (work / "model.onnx", lambda p: cpu.load(check_artifact(p))),
        "ort": (work / "model.ort", lambda p: cpu.load(check_artifact(p))),
        "oracle-npz": (work / "model.ref.npz", load_oracle),
        "data-npz": (work / "data.npz", data.load_npz),
        "checkpoint-config": (ck / "config.json", lambda p: load_checkpoint(p.parent)),
        "checkpoint-weights": (ck / "model.safetensors", lambda p: load_checkpoint(p.parent)),
        "csv": (work / "data.csv", lambda p: data.load_csv(p, "label")),
        "idx": (work / "images.idx", lambda p: data.load_idx(p, p.with_name("labels.idx"))),
    }


def fuzz(path: Path, loader: Callable[[Path], object], n: int, seed: int) -> Tally:
    """``n`` mutations of ``path`` through ``loader``; the pristine file is restored after."""
    rng = np.random.default_rng(seed)
    pristine = path.read_bytes()
    tally = Tally()
    try:
        for case in range(n):
            path.write_bytes(mutate(pristine, rng))
            start = time.perf_counter()
            try:
                loader(path)
                tally.loaded += 1
            except CrEdgeError as e:
                if "\n" in str(e) or not str(e):
                    tally.crashes.append(f"case {case}: multi-line or empty message {str(e)!r}")
                else:
                    tally.refused += 1
            except Exception as e:  # the point: count anything that is not a typed error
                tally.crashes.append(f"case {case}: {type(e).__name__}: {e}")
            elapsed = time.perf_counter() - start
            tally.slowest_s = max(tally.slowest_s, elapsed)
            if elapsed > HANG_S:
                tally.crashes.append(f"case {case}: took {elapsed:.1f} s")
            tally.cases += 1
    finally:
        path.write_bytes(pristine)
    return tally


def _dims(*sizes: int) -> bytes:
    return b"".join(s.to_bytes(4, "big") for s in sizes)


def _npz(**arrays: np.ndarray) -> bytes:
    import io

    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()
