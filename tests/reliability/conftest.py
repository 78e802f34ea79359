"""One briefly trained CR checkpoint and its exports, shared by every row of the battery."""

from __future__ import annotations

from pathlib import Path

import pytest

from reliability import helpers


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return helpers.checkpoint(tmp_path_factory.mktemp("reliability"))


@pytest.fixture(scope="session")
def exported(checkpoint: Path) -> Path:
    """Dynamic batch, domain guard, derivative companion, oracle and .ort copies."""
    return helpers.exported(checkpoint, checkpoint.parent / "export")


@pytest.fixture(scope="session")
def sensitive(checkpoint: Path) -> Path:
    """As ``exported`` plus the per-sample DREG sensitivity output (no .ort)."""
    return helpers.exported(checkpoint, checkpoint.parent / "export-sensitivity", sensitivity=True)
