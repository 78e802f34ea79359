"""Set-up shared by every test module: one CLI runner, and trained models built once.

Training and exporting are what the suite spends its time on, so they happen once
per test process and are shared by every module that runs there. A module's tests run
on one worker (``--dist loadgroup``, one group per module: its module-scoped fixtures
are built once), except in a module that sets ``SPLIT_ACROSS_WORKERS``: its tests are
long and independent, and one worker running them all would leave the other idle.
``trained.py`` holds the helpers behind these fixtures; test modules never import
one another.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import Result
from reliability import helpers as battery


@pytest.fixture(scope="session")
def cli_run() -> Callable[..., Result]:
    """``cli_run("train", "--out", path)``: the ``cr-edge`` command in-process; args made str."""
    return battery.run


@pytest.fixture(scope="session")
def trained_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where ``trained.checkpoint``/``trained.exported`` put the models they train once."""
    return tmp_path_factory.mktemp("trained")


# --- the reliability battery: one briefly trained CR checkpoint and its exports ----------


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return battery.checkpoint(tmp_path_factory.mktemp("reliability"))


@pytest.fixture(scope="session")
def exported(checkpoint: Path) -> Path:
    """Dynamic batch, domain guard, derivative companion, oracle and .ort copies."""
    return battery.exported(checkpoint, checkpoint.parent / "export")


@pytest.fixture(scope="session")
def sensitive(checkpoint: Path) -> Path:
    """As ``exported`` plus the per-sample DREG sensitivity output (no .ort)."""
    return battery.exported(checkpoint, checkpoint.parent / "export-sensitivity", sensitivity=True)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """One xdist group per module (before xdist reads the groups), but where it splits."""
    for item in items:
        module = getattr(item, "module", None)
        if module is not None and not getattr(module, "SPLIT_ACROSS_WORKERS", False):
            item.add_marker(pytest.mark.xdist_group(module.__name__))


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """CI's emulated ARM64 root of this run goes with the run (``device_fixtures``)."""
    from device_fixtures import remove_ci_roots

    remove_ci_roots()
