"""The docs hold: the site builds strictly, and every command the README shows exists.

``mkdocs build --strict`` fails on a broken link, a missing anchor or a page left out of
the navigation, and renders the CLI reference from click itself. The README's commands
are looked up in click's command tree (``cr_edge.cli.group.cli``): a renamed command or
flag fails here, not in a new user's shell.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import click
import pytest

from cr_edge.artifacts.metadata import ModelMetadata
from cr_edge.cli.group import cli

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
FENCE = re.compile(r"^```([a-z]*)\n(.*?)^```", re.M | re.S)


def shell_blocks(text: str) -> list[str]:
    """The fenced blocks a user would paste into a shell (bash, sh, console, or unlabelled)."""
    return [body for lang, body in FENCE.findall(text) if lang in ("", "bash", "sh", "console")]


def commands(block: str, program: str) -> list[list[str]]:
    """Each ``program ...`` line of a block as an argument vector: continuations joined,
    comments dropped."""
    found = []
    for line in block.replace("\\\n", " ").splitlines():
        words = shlex.split(line, comments=True)
        if words and words[0] == program:
            found.append(words[1:])
    return found


def check_command(words: list[str]) -> None:
    """Walk ``words`` down click's tree: each subcommand and each option must exist, and an
    option's value must be one of its choices when the option has choices."""
    command: click.Command = cli
    path = ["cr-edge"]
    i = 0
    while i < len(words):
        word = words[i]
        i += 1
        options = {
            name: param
            for param in command.params
            if isinstance(param, click.Option)
            for name in (*param.opts, *param.secondary_opts)
        }
        if word.startswith("-"):
            name, eq, value = word.partition("=")
            assert name in options, f"{' '.join(path)}: no option {name} (README: {words})"
            param = options[name]
            if not param.is_flag and not eq:
                assert i < len(words), f"{' '.join(path)} {name}: no value (README: {words})"
                value = words[i]
                i += 1
            if isinstance(param.type, click.Choice) and not param.multiple:
                assert value in param.type.choices, f"{' '.join(path)} {name} {value}: not a choice"
        elif isinstance(command, click.Group):
            assert word in command.commands, f"cr-edge has no command {word!r} (README: {words})"
            command = command.commands[word]
            path.append(word)
    assert path != ["cr-edge"] or words == [], f"no subcommand in README's {words}"


def test_readme_commands_name_real_subcommands_and_options() -> None:
    shown = [
        words for block in shell_blocks(README.read_text()) for words in commands(block, "cr-edge")
    ]
    assert len(shown) >= 6  # pipeline and one per stage: a parser that finds none proves nothing
    for words in shown:
        check_command(words)


def test_docs_commands_name_real_subcommands_and_options() -> None:
    """The guides' ``bash`` blocks too (output samples sit in unlabelled blocks, which are
    not commands)."""
    shown = [
        (page, words)
        for page in sorted((REPO / "docs").rglob("*.md"))
        for lang, block in FENCE.findall(page.read_text())
        if lang in ("bash", "sh")
        for words in commands(block, "cr-edge")
    ]
    assert len(shown) >= 8
    for page, words in shown:
        try:
            check_command(words)
        except AssertionError as e:
            raise AssertionError(f"{page.relative_to(REPO)}: {e}") from None


def test_the_checker_refuses_what_does_not_exist() -> None:
    """The lookup above fails on a wrong command, flag or choice (so its passing means something)."""
    check_command(["quantize", "m.onnx", "--out", "q", "--mode", "auto"])
    for wrong in (
        ["quantise", "m.onnx"],
        ["quantize", "m.onnx", "--outdir", "q"],
        ["quantize", "m.onnx", "--mode", "int4"],
    ):
        with pytest.raises(AssertionError):
            check_command(wrong)


def test_readme_keeps_the_commands_ci_runs() -> None:
    """CI (``.ci/run``) runs the README's install and test commands: both stay in its blocks."""
    blocks = "\n".join(shell_blocks(README.read_text()))
    assert 'pip install -e ".[all]"' in blocks
    assert "python -m pytest -n 2" in blocks
    ci = (REPO / ".ci" / "run").read_text()
    assert 'pip install -e ".[all]"' in ci and "python -m pytest -n 2" in ci


def test_readme_links_point_at_files() -> None:
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", README.read_text()):
        if "://" not in target:
            assert (REPO / target).is_file(), f"README links to {target}, which does not exist"


def test_every_metadata_key_is_documented() -> None:
    page = (REPO / "docs" / "reference" / "artifacts.md").read_text()
    missing = [
        f.metadata["key"] for f in fields(ModelMetadata) if f"`{f.metadata['key']}`" not in page
    ]
    assert not missing, f"docs/reference/artifacts.md does not list {missing}"


@pytest.mark.slow
def test_mkdocs_builds_strictly(tmp_path: Path) -> None:
    missing = [m for m in ("mkdocs", "material", "mkdocs_click") if not _module_present(m)]
    if missing:
        if os.environ.get("CI"):
            pytest.fail(f"{missing} not installed under CI: pip install -e '.[docs]'")
        pytest.skip(f"{missing} not installed (pip install -e '.[docs]')")
    site_before = (REPO / "site").exists()
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    reference = (tmp_path / "site" / "reference" / "cli" / "index.html").read_text()
    for name in cli.commands:  # every subcommand rendered by mkdocs-click
        assert f'id="cr-edge-{name}"' in reference, f"the CLI reference lacks cr-edge {name}"
    assert (REPO / "site").exists() == site_before  # the site went to --site-dir, not the repo


def _module_present(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


def test_a_bench_page_gets_its_block_rewritten_and_keeps_its_prose(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    sys.path.insert(0, str(REPO))
    try:
        from bench import pages
    finally:
        sys.path.remove(str(REPO))
    monkeypatch.setattr(pages, "PAGES", tmp_path)
    page = tmp_path / "demo.md"
    page.write_text(
        "# Demo\n\nprose\n\n<!-- bench.demo:output -->\nold\n<!-- /bench.demo:output -->\n\nmore\n"
    )
    with pages.recorded("demo", enabled=True):
        print("ratio 1.25")
    assert "ratio 1.25" in capsys.readouterr().out  # still printed as before
    text = page.read_text()
    block = text.split("<!-- bench.demo:output -->\n")[1].split("<!-- /bench.demo:output -->")[0]
    assert block.startswith("```\nCPU: ") and "ISA: " in block and "ratio 1.25" in block
    assert "old" not in text and text.startswith("# Demo\n\nprose\n") and text.endswith("more\n")
    with pages.recorded("demo", enabled=True, fenced=False):  # a Markdown table after a line
        print("CPU: x, ISA: y\n| a | b |\n|---|---|\n| 1 | 2 |")
    assert "CPU: x, ISA: y\n\n| a | b |\n|---|---|\n| 1 | 2 |\n" in page.read_text()
    page.write_text("# no markers\n")
    with pytest.raises(SystemExit), pages.recorded("demo", enabled=True):
        print("x")


def test_every_bench_script_writes_its_own_page() -> None:
    """A script under bench/ that prints figures (it has a ``__main__``) writes them into
    ``docs/benchmarks/<name>.md`` (``--page``), and the page is in the site's navigation."""
    nav = (REPO / "mkdocs.yml").read_text()
    for script in sorted((REPO / "bench").glob("*.py")):
        source = script.read_text()
        if '__name__ == "__main__"' not in source:
            continue  # a helper module (floor_nets, pages)
        name = script.stem
        page = REPO / "docs" / "benchmarks" / f"{name}.md"
        assert page.is_file(), f"bench/{script.name} has no page docs/benchmarks/{name}.md"
        assert "add_page_option" in source, f"bench/{script.name} has no --page option"
        assert f"<!-- bench.{name}:" in page.read_text(), f"{page.name} has no bench markers"
        assert f"benchmarks/{name}.md" in nav, f"{page.name} is not in mkdocs.yml's nav"
