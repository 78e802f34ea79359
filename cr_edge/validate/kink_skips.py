"""Oracle samples at a kink of a quantized model, named by the model, skipped and counted.

A quantized model's guard (``Clip`` or ``Max``/``Min``) and ReLU masks are those of its
own pre-activations, which int8 weights move by up to their quantization error. Where a
channel of the fp32 model lies within that error of a mask's edge, the two masks may
differ and the derivative jumps between them (a kink): the JVPs of two correct models
then differ by a whole channel's contribution, and no derivative tolerance can say
whether the quantized one is right there. ``quantize`` finds such samples from both
graphs (``cr_edge.quantize.kink_search``) and records them in the model's metadata
(``cr_edge.quant.kinks``) with the digest of the oracle they index; the companion
comparison skips them and reports how many. A skipped sample is not a pass: with more
than ``MAX_KINKS`` of the oracle at kinks nothing is skipped, every sample is judged,
and a failure says the kinks were too many to skip, so that a model cannot pass by
being all kinks. An oracle other than the one recorded (its
digest differs) skips nothing.
"""

from __future__ import annotations

import hashlib

import numpy as np

from cr_edge.artifacts import metadata as schema
from cr_edge.errors import InputError
from cr_edge.validate.oracle import Oracle

KINKS_KEY = schema.key("kinks")
MAX_KINKS = 0.05  # more of the oracle at kinks than this and none is skipped


def oracle_digest(oracle: Oracle) -> str:
    """What a kink list indexes: the oracle's inputs and directions."""
    h = hashlib.sha256(np.ascontiguousarray(oracle.x).tobytes())
    if oracle.v is not None:
        h.update(np.ascontiguousarray(oracle.v).tobytes())
    return h.hexdigest()[:16]


def kinks_metadata(mask: np.ndarray, oracle: Oracle, rule: str) -> dict[str, str]:
    """The ``cr_edge.quant.kinks`` entry for the samples ``mask`` of ``oracle``."""
    entry = {
        "oracle": oracle_digest(oracle),
        "samples": np.flatnonzero(mask).tolist(),
        "of": int(mask.size),
        "rule": rule,
    }
    return schema.props(kinks=entry)


def kink_mask(metadata: dict[str, str], oracle: Oracle, source: str) -> np.ndarray | None:
    """The samples of ``oracle`` the model's metadata names as kinks; None when it names
    none for this oracle (no entry, or one recorded for another oracle)."""
    entry = schema.read(metadata, source).kinks
    if entry is None:
        return None
    try:
        digest, samples, of = entry["oracle"], entry["samples"], int(entry["of"])
    except (ValueError, KeyError, TypeError) as e:
        raise InputError(
            f"{source}: metadata {KINKS_KEY} is not a kink list ({e}); re-quantize"
        ) from e
    n = oracle.x.shape[0]
    if digest != oracle_digest(oracle) or of != n:
        return None
    mask = np.zeros(n, dtype=bool)
    index = np.asarray(samples, dtype=np.int64)
    if index.size and (index.min() < 0 or index.max() >= n):
        raise InputError(f"{source}: metadata {KINKS_KEY} names samples outside the oracle's {n}")
    mask[index] = True
    return mask


def skipped(mask: np.ndarray | None) -> np.ndarray | None:
    """The samples of ``mask`` to leave out of a derivative check: all of them, or none
    (None) when there is no mask or it names more than ``MAX_KINKS`` of the oracle."""
    return None if mask is None or too_many(mask) is not None else mask


def too_many(mask: np.ndarray) -> str | None:
    """Why the kinks in ``mask`` are too many to skip (None: they may be skipped)."""
    if mask.mean() <= MAX_KINKS:
        return None
    return (
        f"{int(mask.sum())}/{mask.size} oracle samples at kinks of the guard or a ReLU "
        f"(> {MAX_KINKS:.0%}): too many to skip, so every sample was judged"
    )
