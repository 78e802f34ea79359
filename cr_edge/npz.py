"""Reading .npz files of numbers: never unpickling, every failure one typed line.

Calibration sets, checkpoints' ``calib.npz`` and parity oracles all come through
here (user data files have their own, label-aware reader in ``cr_edge.data``).
numpy only, so the torch-free runtimes can use it too.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from cr_edge.errors import InputError


def read_npz(path: Path) -> dict[str, np.ndarray]:
    """All arrays of ``path``; object arrays are refused, since loading them runs pickle."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {name: npz[name] for name in npz.files}
    except FileNotFoundError as e:
        raise InputError(f"{path}: not found") from e
    except ValueError as e:
        if "allow_pickle" in str(e):
            raise InputError(f"{path}: holds pickled object arrays; only numbers are read") from e
        raise InputError(f"{path}: not a readable .npz of numbers ({e})") from e
    except (OSError, EOFError, zipfile.BadZipFile, KeyError) as e:
        raise InputError(f"{path}: not a readable .npz of numbers ({e})") from e
