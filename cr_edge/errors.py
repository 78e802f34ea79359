"""The few errors cr-edge raises on purpose.

Each carries the process exit code the CLI uses for it, so that a command turns
any of them into one line on stderr and a meaningful status: 2 for input the
user can fix, 1 for a check that ran and failed.
"""

from __future__ import annotations


class CrEdgeError(Exception):
    """Base of every deliberate cr-edge failure; the message is one line for a person."""

    exit_code = 2


class InputError(CrEdgeError):
    """A file, field or option the user gave cannot be used as it is."""

    exit_code = 2


class ExportError(CrEdgeError):
    """A model cannot be turned into the requested artifact."""

    exit_code = 2


class NonFiniteError(CrEdgeError):
    """A NaN or Inf appeared where a finite number is required (data, loss, weights)."""

    exit_code = 2


class CheckFailed(CrEdgeError):
    """A parity, accuracy or validation check ran and did not pass."""

    exit_code = 1


class TrainingFailed(CheckFailed):
    """Training ran but diverged or collapsed; the message names the cause and the fix."""

    exit_code = 1
