"""How a shell starts a command, for tests that press Ctrl-C on a child process.

A child inherits an ignored or blocked SIGINT across ``exec``, and Python leaves an
ignored SIGINT ignored: a test runner's worker whose signal state an earlier test (or a
library it ran in-process) changed would start children that Ctrl-C cannot reach, and
the test would measure the runner, not cr-edge. A shell gives SIGINT its default
disposition, unblocked; so does ``from_a_terminal``, as a ``preexec_fn``.
"""

from __future__ import annotations

import signal


def from_a_terminal() -> None:
    """SIGINT unblocked and at its default disposition, as an interactive shell leaves it."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    signal.signal(signal.SIGINT, signal.SIG_DFL)
