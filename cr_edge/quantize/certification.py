"""Certification on devices: the hook ``quantize`` takes, and how a verdict joins a candidate.

``quantize`` must not import ``cr_edge.devices`` (the layers go the other way), so the
devices are injected from above as a ``Certify`` callable: it is given a candidate's
files, written to a temporary folder exactly as ``quantize`` would ship them (model,
derivative companion, oracle), and answers one ``DeviceVerdict`` per device, with the
error measured on this machine and on the device against the same tolerance.

A candidate qualifies only if it passes here *and* on every named device: a verdict
that fails turns the candidate's ``passed`` off and its ``why`` names the device, the
errors on both sides and the likely cause, so ``--mode auto`` never keeps it. The
candidates are certified best first (auto's score); with ``first_only`` the walk stops
at the first that passes everywhere (what the pipeline does to keep its cost down).
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol


@dataclass(frozen=True)
class CandidateFiles:
    """One candidate as it would be shipped: the files a device validates."""

    label: str
    precision: str
    model: Path
    companion: Path | None
    oracle: Path


@dataclass(frozen=True)
class DeviceVerdict:
    """One device's verdict on one candidate, and the figures behind it.

    ``check`` is the column the headline figures come from (the failing one, else
    ``outputs``); ``host_error``/``device_error`` are that column's error here and
    there (max abs error for outputs, max relative error for derivatives) and
    ``tolerance`` its bound (``atol``, or the derivative's ``rtol``); ``rtol`` is the
    outputs' relative term (fp16: ``|err| <= atol + rtol |y|`` element by element, so a
    max abs error over ``atol`` may still pass and no single ratio says how far from
    failing it is: the error over the tolerance is given only where ``rtol`` is 0). ``cause`` is the
    device's CPU feature that likely explains a disagreement (``devices.diagnosis``).
    """

    device: str
    passed: bool
    check: str
    host_error: float | None
    device_error: float | None
    tolerance: float | None
    cause: str | None = None
    detail: str = ""  # the failing checks' own lines, or why nothing was measured
    fingerprint: dict = field(default_factory=dict)
    emulated: bool = False
    rtol: float = 0.0

    @property
    def over(self) -> float | None:
        """The device's error over the tolerance (None when either is not a number, or the
        bound has a relative term)."""
        if self.device_error is None or not self.tolerance or self.rtol:
            return None
        return self.device_error / self.tolerance

    def cell(self) -> str:
        """The table cell: pass/FAIL and the device's error over the tolerance (with a
        relative term in the bound: the error there, absolute)."""
        mark = "pass" if self.passed else "FAIL"
        over = self.over
        if over is not None and math.isfinite(over):
            figure = f" {over:.2g}x"
        elif self.device_error is not None:
            figure = f" err {self.device_error:.2g}"
        else:
            figure = ""
        short = "" if self.passed or self.check == "outputs" else f" {self.check[:5]}"
        return f"{mark}{short}{figure}"

    def bound(self) -> str:
        """The tolerance as a reader checks it."""
        if self.rtol and self.check == "outputs":
            return f"{_g(self.tolerance)} + {_g(self.rtol)}|y|"
        return _g(self.tolerance)

    def reason(self) -> str:
        """One line: by how much on each side, and the likely cause."""
        sides = (
            f"{self.check} error {_g(self.host_error)} here, {_g(self.device_error)} on "
            f"@{self.device}, tolerance {self.bound()}"
        )
        verdict = "passes" if self.passed else "fails"
        cause = f"; likely cause: {self.cause}" if self.cause else ""
        detail = f" ({self.detail})" if self.detail and not self.passed else ""
        return f"{verdict} on @{self.device}: {sides}{cause}{detail}"

    def to_json(self) -> dict:
        return {
            "device": self.device,
            "passed": self.passed,
            "check": self.check,
            "host_error": self.host_error,
            "device_error": self.device_error,
            "tolerance": self.tolerance,
            "rtol": self.rtol,
            "error_over_tolerance": self.over,
            "cause": self.cause,
            "detail": self.detail,
            "emulated": self.emulated,
            "fingerprint": self.fingerprint,
        }


class Certify(Protocol):
    """What ``quantize(..., certify=)`` calls: the devices' verdicts on one candidate."""

    devices: Sequence[str]  # the names, in column order
    first_only: bool  # stop at the first candidate that passes everywhere

    def __call__(self, candidate: CandidateFiles) -> list[DeviceVerdict]: ...


def _g(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}"


def certify_candidates(
    order: list,
    certify: Certify,
    write: Callable[[object, Path], CandidateFiles],
) -> None:
    """Certify the candidates of ``order`` (``Tried``, best first) on the devices.

    Each is written by ``write(tried, folder)`` into a fresh temporary folder and handed
    to ``certify``; its verdicts land in ``tried.devices`` and one that fails anywhere is
    no longer ``passed``. With ``certify.first_only`` the walk ends at the first that
    passes everywhere; the rest keep an empty ``devices`` (not certified).
    """
    for tried in order:
        with tempfile.TemporaryDirectory(prefix="cr-edge-certify-") as folder:
            verdicts = certify(write(tried, Path(folder)))
        join(tried, verdicts)
        if certify.first_only and tried.passed:
            return


def join(tried, verdicts: list[DeviceVerdict]) -> None:
    """Record ``verdicts`` on ``tried``: a failing one turns it down and says why."""
    tried.devices = {v.device: v for v in verdicts}
    failed = [v for v in verdicts if not v.passed]
    if failed and not tried.passed:  # an explicit policy that failed here as well
        tried.why = f"{tried.why}; also " + "; ".join(v.reason() for v in failed)
    elif failed:
        tried.passed = False
        tried.why = "passes here, but " + "; ".join(v.reason() for v in failed)
    elif verdicts:
        names = ", ".join(f"@{v.device}" for v in verdicts)
        tried.why = f"{tried.why}; certified on {names}"
