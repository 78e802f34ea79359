"""What every runtime offers: ``available()``, ``load(artifact) -> Session``, ``run``.

A ``Session`` is a loaded model that can run many times (``profile`` reuses it), knows
its input/output names, shapes and dtypes, and, where the runtime can tell, which
execution provider took which node.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cr_edge.runtimes.safe_load import Artifact, check_artifact, sibling


class Unavailable(Exception):
    """The runtime cannot run here, or has no artifact it can load; the message says why."""


class RunError(Exception):
    """A loaded model refused to run on the given inputs (a failed check, not bad input)."""


@dataclass(frozen=True)
class TensorSpec:
    """A model input or output: dims are ints, or a name / None when dynamic."""

    name: str
    shape: tuple[int | str | None, ...]
    dtype: np.dtype


@dataclass(frozen=True)
class AssignedNode:
    """One node and the execution provider the session gave it."""

    provider: str
    name: str
    op_type: str


class Session(ABC):
    """A loaded model, ready to run many times."""

    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    metadata: dict[str, str]

    @property
    def input_names(self) -> list[str]:
        return [s.name for s in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [s.name for s in self.outputs]

    @abstractmethod
    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Run once; raise ``RunError`` when the model refuses the inputs."""

    def assignment(self) -> list[AssignedNode] | None:
        """Node -> execution provider as the session placed them; None if it cannot tell."""
        return None

    @property
    def fixed_batch(self) -> int | None:
        """The batch size the model fixes on its first input's axis 0; None when dynamic."""
        dim = self.inputs[0].shape[0] if self.inputs and self.inputs[0].shape else None
        return dim if isinstance(dim, int) else None

    def run_all(self, feeds: dict[str, np.ndarray], batch: int | None = None) -> list[np.ndarray]:
        """Run samples on axis 0, in chunks of the model's batch size when that is fixed,
        else of ``batch`` (None: all at once) to bound the memory a large set takes.

        A fixed batch's last chunk is padded by repeating its final sample, and the
        padding dropped again, so a model exported with batch 1 still sees every oracle
        sample; a dynamic batch's last chunk is run as it is (no padding sample may
        move a per-batch activation scale).
        """
        fixed = self.fixed_batch
        size = fixed or batch
        n = next(iter(feeds.values())).shape[0]
        if size is None or size == n or (fixed is None and n <= size):
            return self.run(feeds)
        chunks = []
        for start in range(0, n, size):
            part = {k: v[start : start + size] for k, v in feeds.items()}
            if fixed is not None:
                part = {k: _pad(v, size) for k, v in part.items()}
            chunks.append(self.run(part))
        return [np.concatenate([c[i] for c in chunks])[:n] for i in range(len(chunks[0]))]


class Runtime(ABC):
    """A named way of running an artifact (an ORT execution provider, ExecuTorch)."""

    name: str
    suffixes: tuple[str, ...]  # artifact types it loads, preferred first

    @abstractmethod
    def available(self) -> tuple[bool, str]:
        """(True, "") when it can run here, else (False, one line saying why)."""

    @abstractmethod
    def load(self, artifact: Artifact) -> Session:
        """Load a checked artifact; ``InputError`` if the file cannot be loaded."""

    def loadable(self, artifact: Path) -> Path:
        """The file this runtime loads for ``artifact``: itself, or a sibling it can load."""
        if artifact.suffix.lower() in self.suffixes:
            return artifact
        for suffix in self.suffixes:
            if sibling(artifact, suffix).is_file():
                return sibling(artifact, suffix)
        wanted = " or ".join(sibling(artifact, s).name for s in self.suffixes)
        raise Unavailable(
            f"{self.name} runs {'/'.join(self.suffixes)}; no {wanted} beside {artifact}"
        )

    def run(self, artifact: Path, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Check, load and run ``artifact`` once (use ``load`` to run many times)."""
        return self.load(check_artifact(self.loadable(Path(artifact)))).run(inputs)


def _pad(arr: np.ndarray, size: int) -> np.ndarray:
    if arr.shape[0] == size:
        return arr
    return np.concatenate([arr, np.repeat(arr[-1:], size - arr.shape[0], axis=0)])
