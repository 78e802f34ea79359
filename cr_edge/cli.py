"""The ``cr-edge`` command line: one thin function per command, no logic of its own.

Every deliberate failure is a ``CrEdgeError``; ``main`` turns it into one line on
stderr and its exit code (2 bad input, 1 failed check), never a traceback.
"""

from __future__ import annotations

import sys

import click

from cr_edge import __version__
from cr_edge.errors import CrEdgeError


class _Group(click.Group):
    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except CrEdgeError as e:
            click.echo(f"error: {e}", err=True)
            ctx.exit(e.exit_code)


@click.group(cls=_Group)
@click.version_option(__version__, prog_name="cr-edge")
def cli() -> None:
    """Train, export, quantize, validate and profile ChainzRule networks for the edge."""


def main() -> None:
    cli(prog_name="cr-edge")


if __name__ == "__main__":
    sys.exit(main())
