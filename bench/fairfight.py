"""Splice finished Fair Fight reports into ``docs/benchmarks/fairfight.md``.

``cr-edge fairfight`` writes ``report.md`` into its output folder, every figure read from
``report.json``. This script copies that Markdown, unchanged, between the page's
``<!-- bench.fairfight:DATASET -->`` markers, so the page's tables are the fight's own and
never typed by hand; the prose around them (what held, read by people) stays.

Run from the repository root after the fights: ``python -m bench.fairfight
runs/fairfight-mnist1d runs/fairfight-digits --page`` (without ``--page`` it prints them).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from bench.pages import add_page_option, splice


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("folders", nargs="+", type=Path, help="cr-edge fairfight --out folders")
    add_page_option(p, "fairfight")
    args = p.parse_args()
    for folder in args.folders:
        try:
            report = json.loads((folder / "report.json").read_text(encoding="utf-8"))
            body = (folder / "report.md").read_text(encoding="utf-8")
        except (OSError, ValueError) as e:
            raise SystemExit(
                f"{folder}: no finished fight report ({e}); run cr-edge fairfight"
            ) from None
        # the report's own title is the page section's heading already
        body = body.split("\n", 1)[1] if body.startswith("# ") else body
        print(body)
        if args.page:
            page = splice("fairfight", report["dataset"], body, fenced=False)
            print(f"{folder}: {report['dataset']} ({report['budget']}) -> {page}", file=sys.stderr)


if __name__ == "__main__":
    main()
