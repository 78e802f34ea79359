"""Silence other tools for one block: their stdout, their warnings and their loggers.

torch's exporter, ExecuTorch and onnxruntime's quantizer print progress and warn at
length about things a cr-edge user cannot act on; the stage's own report says what
matters. Logger levels are restored on the way out, so the caller's logging is left
as it was.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Iterator


@contextlib.contextmanager
def quiet(*loggers: str) -> Iterator[None]:
    """Within the block: stdout discarded, warnings ignored, ``loggers`` at ERROR ("" is root)."""
    chosen = [logging.getLogger(name or None) for name in loggers]
    levels = [lg.level for lg in chosen]
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for lg in chosen:
            lg.setLevel(logging.ERROR)
        try:
            yield
        finally:
            for lg, level in zip(chosen, levels, strict=True):
                lg.setLevel(level)
