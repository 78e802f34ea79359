"""Benchmark pages: each bench script writes its figures into ``docs/benchmarks/<bench>.md``.

A page holds prose written by people (what the figures say) and blocks written by the
script, each between ``<!-- bench.NAME:BLOCK -->`` and ``<!-- /bench.NAME:BLOCK -->``.
A run with ``--page`` replaces the blocks only, so figures are never typed from memory
and the prose around them stays. Every block names the CPU and its ISA flags (added
here when the script's own output does not): onnxruntime picks kernels by ISA, so a
figure without its machine cannot be compared.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import re
import sys
from collections.abc import Iterator
from pathlib import Path

PAGES = Path(__file__).resolve().parents[1] / "docs" / "benchmarks"


def page_of(bench: str) -> Path:
    """The page a bench script writes: ``bench/horner.py`` -> ``docs/benchmarks/horner.md``."""
    return PAGES / f"{bench}.md"


def machine() -> str:
    """One line naming this CPU, its usable cores, its ISA flags and onnxruntime's version."""
    from cr_edge.profile.device import describe_device

    d = describe_device()
    return (
        f"CPU: {d['cpu']} ({d['usable_cores']} usable cores), ISA: {', '.join(d['isa'])}; "
        f"onnxruntime {d['onnxruntime']}"
    )


def load_average(when: str) -> str:
    """The 1/5/15-minute load averages ``when`` ("at start", "at end"): a busy machine's
    timings are inflated, and the reader should know it."""
    import os

    return f"load average {when}: {' '.join(f'{v:.1f}' for v in os.getloadavg())}"


def _names_machine(body: str) -> bool:
    """Whether the script's output already names this CPU and its ISA flags (either spelling)."""
    from cr_edge.profile.device import describe_device

    d = describe_device()
    flags = (", ".join(d["isa"]), " ".join(d["isa"]))
    return d["cpu"] in body and any(f in body for f in flags)


def splice(bench: str, block: str, body: str, fenced: bool = True) -> Path:
    """Replace the block between the page's markers with ``body`` (in a fence, or as Markdown)."""
    page = page_of(bench)
    start, end = f"<!-- bench.{bench}:{block} -->", f"<!-- /bench.{bench}:{block} -->"
    text = page.read_text()
    if start not in text or end not in text:
        raise SystemExit(f"{page}: no {start} ... {end} markers")
    content = f"```\n{body.strip()}\n```" if fenced else _tables_apart(body.strip())
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.S)
    page.write_text(pattern.sub(lambda _: f"{start}\n{content}\n{end}", text))
    return page


def _tables_apart(markdown: str) -> str:
    """A blank line before each table that follows a line of text: without it Markdown
    reads the table as the end of that paragraph."""
    out: list[str] = []
    for line in markdown.split("\n"):
        if line.startswith("|") and out and out[-1].strip() and not out[-1].startswith("|"):
            out.append("")
        out.append(line)
    return "\n".join(out)


def add_page_option(parser: argparse.ArgumentParser, bench: str) -> None:
    """``--page``: also write the output into this bench's page."""
    parser.add_argument(
        "--page",
        action="store_true",
        help=f"Also write the output into docs/benchmarks/{bench}.md between its markers.",
    )


class _Tee(io.TextIOBase):
    """Writes to the terminal as before and keeps a copy for the page."""

    def __init__(self, *streams: io.TextIOBase) -> None:
        self.streams = streams

    def write(self, text: str) -> int:
        for stream in self.streams:
            stream.write(text)
        return len(text)

    def flush(self) -> None:
        for stream in self.streams:
            stream.flush()


@contextlib.contextmanager
def recorded(bench: str, enabled: bool, block: str = "output", fenced: bool = True) -> Iterator:
    """Print as usual; when ``enabled``, splice everything printed into the bench's page.

    ``fenced=False`` for scripts that print Markdown tables. The page is written only
    when the run finishes: an interrupted run leaves the last figures in place.
    """
    if not enabled:
        yield
        return
    copy = io.StringIO()
    with contextlib.redirect_stdout(_Tee(sys.stdout, copy)):
        yield
    body = copy.getvalue()
    if not _names_machine(body):
        body = machine() + ("\n" if fenced else "\n\n") + body
    print(f"wrote {splice(bench, block, body, fenced)}", file=sys.stderr)
