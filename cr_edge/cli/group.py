"""The ``cr-edge`` group: one line and an exit code for every failure, never a traceback.

Options are typed (``click.Choice``, ranges, the comma lists of ``cli_types``) so a
bad value fails before any work. The checks a Python caller needs too (existing
folders, the sandboxed load of untrusted models) live in the library. Every
deliberate failure is a ``CrEdgeError`` or a click usage error; the group turns
either into one line on stderr and its exit code (2 bad input, 1 failed check),
never a traceback. Anything else that escapes a command is a bug, but a user still
gets one line, exit 1 and a hint: ``cr-edge --debug COMMAND`` shows the traceback.

One word, one meaning across commands: ``--data`` a dataset, ``--label`` the CSV
label column, ``--data-format`` a CSV's layout, ``--format`` what export writes, ``--runtime`` where a model runs,
``--batch`` batch sizes to run, ``--derivatives`` how derivatives are checked.
"""

from __future__ import annotations

import sys

import click

from cr_edge import __version__
from cr_edge.cli.types import renamed
from cr_edge.errors import CrEdgeError


class _Group(click.Group):
    def resolve_command(self, ctx: click.Context, args: list[str]):
        from cr_edge.artifacts.folder_lock import describe_process

        name, command, rest = super().resolve_command(ctx, args)
        describe_process(f"cr-edge {name}")  # how other writers' messages name this process
        rest, warnings = renamed(name or "", rest)
        for warning in warnings:
            click.echo(warning, err=True)
        return name, command, rest

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except CrEdgeError as e:
            click.echo(f"error: {e}", err=True)
            ctx.exit(e.exit_code)
        except click.UsageError as e:  # one line, as for every other bad input
            command = f"cr-edge {ctx.invoked_subcommand or ''}".strip()
            click.echo(f"error: {e.format_message()} (see {command} --help)", err=True)
            ctx.exit(e.exit_code)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise  # click's own usage errors and exits: it prints them
        except Exception as e:  # the last resort: an unexpected error is still one line
            if ctx.params.get("debug"):
                raise
            what = (str(e).strip().splitlines() or [""])[0]
            click.echo(
                f"error: unexpected {type(e).__name__}{': ' + what if what else ''} "
                "(a bug in cr-edge; rerun with cr-edge --debug ... for the traceback)",
                err=True,
            )
            ctx.exit(1)


@click.group(cls=_Group)
@click.version_option(__version__, prog_name="cr-edge")
@click.option("--debug", is_flag=True, help="Show the traceback of an unexpected error.")
def cli(debug: bool) -> None:
    """Train, export, quantize, validate and profile ChainzRule networks for the edge."""


def main() -> None:
    cli(prog_name="cr-edge")


if __name__ == "__main__":
    sys.exit(main())
