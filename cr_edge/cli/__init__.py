"""The ``cr-edge`` command line: thin click commands over ``cr_edge.api`` and the stages.

``group`` holds the click group (one line and an exit code per failure); each command
group has its own module, which registers itself on import; ``types`` holds the
option types shared by the commands, ``terminal`` and ``progress`` what they print.
"""

from cr_edge.cli import (
    device,
    export,
    fairfight,
    pipeline,
    profile,
    quantize,
    train,
    validate,
)
from cr_edge.cli.group import cli, main

__all__ = [
    "cli",
    "device",
    "export",
    "fairfight",
    "main",
    "pipeline",
    "profile",
    "quantize",
    "train",
    "validate",
]
