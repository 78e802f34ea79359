"""One flag, one meaning: every option spelled alike in two commands means the same there.

The walk reads click's own command tree (what ``--help`` prints), so a new command that
reuses a flag for something else fails here before a user learns two meanings.
"""

from __future__ import annotations

import re

import click
import pytest

from cr_edge.cli.group import cli
from cr_edge.cli.types import RENAMED, renamed

# A flag shared by two or more commands -> what its help must say it does.
MEANINGS = {
    "--force": r"^(Overwrite|Replace|Reinstall)\b",  # replace what is already there
    "--accept-failed-export": r"export that failed its own",
    "--out": r"folder",
    "--json": r"^Write .*JSON",
    "--format": r"^What to write",
    "--runtime": r"cpu, ort-mobile",
    "--data": r"^Built-in dataset",
    "--label": r"^CSV column holding the labels",
    "--recipe": r"^A zoo recipe name",
    "--task": r"^What the label is",
    "--epochs": r"epochs",
    "--on": r"device",
    "--certify-on": r"^Certify quantize's candidates on these devices",
}


def _options() -> dict[str, list[tuple[str, click.Option]]]:
    found: dict[str, list[tuple[str, click.Option]]] = {}

    def walk(prefix: str, command: click.Command) -> None:
        if isinstance(command, click.Group):
            for name, sub in command.commands.items():
                walk(f"{prefix} {name}".strip(), sub)
            return
        for param in command.params:
            if isinstance(param, click.Option) and not param.hidden:
                for opt in param.opts:
                    found.setdefault(opt, []).append((prefix, param))

    walk("", cli)
    return found


def _default(option: click.Option) -> object:
    value = option.default
    return None if value is None or type(value).__name__ == "Sentinel" else value


def test_a_shared_flag_has_one_declared_meaning_and_one_default():
    for flag, uses in _options().items():
        if len(uses) < 2:
            continue
        assert flag in MEANINGS, f"{flag} is used by {[c for c, _ in uses]}: declare its meaning"
        for command, option in uses:
            assert re.search(MEANINGS[flag], option.help or ""), (flag, command, option.help)
        defaults = {repr(_default(o)) for _, o in uses if _default(o) is not None}
        assert len(defaults) <= 1, f"{flag} defaults differ: {defaults}"


def test_the_walk_catches_a_flag_that_means_two_things():
    clash = click.Command("x", params=[click.Option(["--force"], help="Take a failed export.")])
    assert not re.search(MEANINGS["--force"], clash.params[0].help)


@pytest.mark.parametrize(("command", "old"), [(c, o) for c, t in RENAMED.items() for o in t])
def test_an_old_spelling_still_works_for_one_release_and_says_so(command: str, old: str):
    args, warnings = renamed(command, [old, *(["x"] if old != "--ort" else [])])
    assert args[0] == RENAMED[command][old][0]
    assert warnings == [
        f"warning: cr-edge {command} {old} is deprecated; use {' '.join(RENAMED[command][old])}"
    ]
    assert args[0] in _options(), f"{args[0]} is not an option of cr-edge {command}"


def test_an_old_spelling_with_equals_keeps_its_value():
    args, _ = renamed("quantize", ["--poly=int8"])
    assert args == ["--chain-precision=int8"]
