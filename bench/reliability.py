"""The reliability battery's figures: one row per test module in tests/reliability/, from the tests' own loops.

Rows with a loop (1 canary reads, 2 fuzzing, 3 pickle payloads, 4/5 located data
errors, 7 kills, 9 perturbations, 15 races, 16 modes, 17 interrupted folders, 18
pipeline kills, 19 concurrent readers, 20 command fuzzing) run it here with larger
counts; the other rows run their test module and report its cases. Columns: cases tried, crashes (an
untyped error, a traceback, a signal, a hang, or for rows 3/12/14 a guard that did
not hold), partial files under final names, canary reads, and faults caught.

Run from the repository root: ``python -m bench.reliability [--fuzz N] [--kills K]``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import pickle
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from reliability import helpers  # noqa: E402
from reliability.fuzz import fuzz, targets  # noqa: E402
from reliability.kills import kill_loop  # noqa: E402
from reliability.perturb import perturbed_models  # noqa: E402

from bench.pages import add_page_option, recorded  # noqa: E402

FAULTS = {
    1: "external data outside the folder",
    2: "mutated onnx/ort/npz/checkpoint/csv/idx",
    3: "pickle in npz / checkpoint",
    4: "broken CSV",
    5: "broken IDX",
    6: "NaN/Inf in data, loss, weights, calib",
    7: "SIGKILL during train/export/quantize",
    8: "read-only or full output folder",
    9: "single-coefficient perturbation",
    10: "quantized accuracy collapse",
    11: "dynamic batch 1/2/7/512",
    12: "opset/IR newer than --runtime-version",
    13: "same seed twice",
    14: "inputs at 100x range",
    15: "two writers, one folder",
    16: "umask 022: modes of every file kind",
    17: "interrupted export/quantize/train, then a reader",
    18: "SIGKILL during pipeline",
    19: "concurrent readers (validate+profile)",
    20: "unexpected error / fuzz corpus, all commands",
    21: "--target-runtime table: every row cited",
}


@dataclass
class Row:
    number: int
    cases: int
    crashes: int = 0
    partial: int | str = "-"
    canary: int | str = "-"
    caught: str = "-"


def row1(work: Path) -> Row:
    from reliability.test_r01_external_data import CASES, attack

    cases = reads = refused = 0
    for case in CASES:
        for command in ("validate", "profile"):
            folder = work / f"r1-{case.replace('/', '_')}-{command}"
            folder.mkdir()
            model, canary, location = attack(folder, case)
            extra = ["--iters", "1", "--no-memory"] if command == "profile" else []
            result = helpers.run(command, model, "--runtime", "cpu", *extra)
            cases += 1
            refused += result.exit_code == 2 and repr(location) in result.output
            reads += canary.opens()
            canary.close()
    return Row(1, cases, cases - refused, canary=reads, caught=f"{refused}/{cases} refused")


def row2(ck: Path, ex: Path, work: Path, n: int) -> Row:
    kinds = targets(ck, ex, work / "fuzz")
    per = -(-n // len(kinds))
    tallies = [fuzz(p, loader, per, seed) for seed, (p, loader) in enumerate(kinds.values())]
    cases = sum(t.cases for t in tallies)
    crashes = sum(len(t.crashes) for t in tallies)
    refused = sum(t.refused for t in tallies)
    slowest = max(t.slowest_s for t in tallies)
    return Row(2, cases, crashes, caught=f"{refused} typed, slowest {slowest:.2f} s")


def row3(ck: Path, ex: Path, work: Path) -> Row:
    from reliability.test_r03_no_pickle import Payload, evil_npz

    marker = work / "r3-marker"
    evil = evil_npz(work / "r3.npz", marker)
    pt = work / "r3.pt"
    pt.write_bytes(pickle.dumps(Payload(marker)))
    attempts = [
        ("validate", ex / "model.onnx", "--runtime", "cpu", "--ref", evil),
        ("quantize", ex / "model.onnx", "--out", work / "r3q", "--calib", evil),
        ("train", "--data", evil, "--epochs", "1", "--out", work / "r3ck"),
        ("export", pt, "--out", work / "r3ex"),
    ]
    refused = sum(helpers.run(*a).exit_code == 2 for a in attempts)
    return Row(
        3,
        len(attempts),
        int(marker.exists()),
        caught=f"{refused}/{len(attempts)} refused, marker {'CREATED' if marker.exists() else 'absent'}",
    )


def row4(work: Path) -> Row:
    from reliability.test_r04_csv_errors import CASES

    located = 0
    for name, (content, target, where) in CASES.items():
        path = work / f"r4-{len(name)}-{abs(hash(name))}.csv"
        path.write_text(content)
        result = helpers.run(
            "train", "--data", path, "--label", target, "--epochs", "1", "--out", work / "r4ck"
        )
        located += (
            result.exit_code == 2
            and str(path) in result.output
            and bool(re.search(where, result.output))
        )
    return Row(4, len(CASES), len(CASES) - located, caught=f"{located}/{len(CASES)} located")


def row5(work: Path) -> Row:
    from reliability.test_r05_idx_errors import CASES

    from cr_edge.data import load_idx
    from cr_edge.errors import InputError

    named = 0
    for images, labels, field in CASES.values():
        (work / "i.idx").write_bytes(images)
        (work / "l.idx").write_bytes(labels)
        try:
            load_idx(work / "i.idx", work / "l.idx")
        except InputError as e:
            named += field in str(e)
    return Row(5, len(CASES), len(CASES) - named, caught=f"{named}/{len(CASES)} name the field")


def row7(ck: Path, ex: Path, work: Path, kills: int) -> Row:
    runs = {
        "train": ["train", "--recipe", "digits-cr", "--epochs", "3", "--force"],
        "export": ["export", ck, *helpers.EXPORT_ARGS, "--force"],
        "quantize": ["quantize", ex / "model.onnx", "--mode", "dynamic", "--force"],
    }
    before = {f: helpers.hashes(f) for f in (ck, ex)}
    tallies = [
        kill_loop([*a, "--out", work / f"r7-{n}"], work / f"r7-{n}", kills, s)
        for s, (n, a) in enumerate(runs.items())
    ]
    intact = {f: helpers.hashes(f) for f in before} == before
    killed = sum(t.killed for t in tallies)
    partial = sum(len(t.partial) for t in tallies)
    return Row(
        7,
        sum(t.runs for t in tallies),
        0,
        partial,
        caught=f"{killed} killed mid-way; earlier {'intact' if intact else 'CHANGED'}",
    )


def row9(ex: Path, work: Path) -> Row:
    from cr_edge.validate.validator import cpu_parity

    tried = caught = 0
    for _, model in perturbed_models(ex, work / "r9"):
        tried += 1
        caught += not cpu_parity(model).passed
    return Row(9, tried, 0, caught=f"{caught}/{tried} caught")


def row15(work: Path, races: int) -> Row:
    from reliability.test_r15_two_writers import race

    tally = race(work / "r15", races)
    return Row(
        15,
        tally.races,
        len(tally.corrupted),
        caught=f"{tally.refused} second writers refused, {len(tally.corrupted)} corrupted folders",
    )


def row16(work: Path) -> Row:
    from reliability.test_r16_umask import modes, write_everything

    from cr_edge.pipeline import executorch_installed

    write_everything(work / "r16", 0o022, executorch_installed())
    found = modes(work / "r16")
    wrong = [n for n, m in found.items() if m != 0o644]
    kinds = sorted({Path(n).suffix for n in found})
    return Row(
        16,
        len(found),
        len(wrong),
        caught=f"{len(found) - len(wrong)}/{len(found)} files 0644, kinds {' '.join(kinds)}",
    )


def row17(ck: Path, ex: Path, work: Path, kills: int) -> Row:
    from reliability.test_r17_incomplete import interrupt_and_read, writers

    quantized = work / "r17-quantized"
    helpers.run("quantize", ex / "model.onnx", "--out", quantized, "--mode", "dynamic")
    complete = {"train": ck, "export": ex, "quantize": quantized}
    folder = work / "r17"
    folder.mkdir()
    tallies = [
        interrupt_and_read(stage, args, complete[stage], folder, kills, seed)
        for seed, (stage, args) in enumerate(writers(ck, ex).items())
    ]
    readers = sum(t.readers for t in tallies)
    accepted = sum(len(t.accepted) for t in tallies)
    return Row(
        17,
        readers,
        accepted,
        caught=f"{sum(t.kills for t in tallies)} interrupted folders, {accepted} readers accepted one",
    )


def row18(work: Path, kills: int) -> Row:
    from reliability.test_r18_pipeline_kill import kill_pipeline

    tally, changed, rerun = kill_pipeline(work / "r18", kills, seed=18)
    return Row(
        18,
        tally.runs,
        len(changed),
        len(tally.partial),
        caught=f"{tally.killed} killed mid-way; rerun exit {rerun.returncode}",
    )


def row19(ex: Path, work: Path, readers: int) -> Row:
    from reliability.test_r19_concurrent_readers import read_concurrently

    (work / "r19").mkdir()
    failures = read_concurrently(ex, work / "r19", readers)
    return Row(
        19,
        2 * readers,
        len(failures),
        caught=f"{readers}+{readers} at once, {len(failures)} failed",
    )


def row20(ck: Path, ex: Path, work: Path, per_kind: int) -> Row:
    from reliability.test_r20_no_traceback import fuzz_commands

    (work / "r20").mkdir()
    cases, bad = fuzz_commands(ck, ex, work / "r20", per_kind)
    return Row(20, cases, len(bad), caught=f"{cases - len(bad)}/{cases} without a traceback")


def by_pytest(number: int, name: str = "") -> Row:
    """Rows without a loop of their own: run their test module, count its cases."""
    module = next((REPO / "tests" / "reliability").glob(f"test_r{number:02d}_{name or '*'}.py"))
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(module)],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    counts = {k: int(v) for v, k in re.findall(r"(\d+) (passed|failed|error)", done.stdout)}
    cases = sum(counts.values())
    failed = counts.get("failed", 0) + counts.get("error", 0)
    return Row(number, cases, failed, caught=f"{counts.get('passed', 0)}/{cases} tests pass")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fuzz", type=int, default=5000, help="mutated files for row 2")
    parser.add_argument("--kills", type=int, default=5, help="SIGKILLs per command for row 7")
    parser.add_argument("--races", type=int, default=20, help="two-writer races for row 15")
    parser.add_argument("--interrupts", type=int, default=4, help="kill points per writer, row 17")
    parser.add_argument("--pipeline-kills", type=int, default=12, help="SIGKILLs for row 18")
    parser.add_argument("--readers", type=int, default=8, help="concurrent readers each, row 19")
    parser.add_argument("--fuzz20", type=int, default=12, help="mutations per file kind, row 20")
    parser.add_argument("--rows", help="comma list of rows to run (default: all)")
    add_page_option(parser, "reliability")
    args = parser.parse_args()
    load = " ".join(f"{v:.1f}" for v in os.getloadavg())  # a shared machine says so
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            ck = helpers.checkpoint(work)
            ex = helpers.exported(ck, work / "export")
        runs = {
            1: lambda: row1(work),
            2: lambda: row2(ck, ex, work, args.fuzz),
            3: lambda: row3(ck, ex, work),
            4: lambda: row4(work),
            5: lambda: row5(work),
            6: lambda: by_pytest(6),
            7: lambda: row7(ck, ex, work, args.kills),
            8: lambda: by_pytest(8),
            9: lambda: row9(ex, work),
            **{n: (lambda n=n: by_pytest(n)) for n in (10, 11, 12, 13, 14)},
            15: lambda: row15(work, args.races),
            16: lambda: row16(work),
            17: lambda: row17(ck, ex, work, args.interrupts),
            18: lambda: row18(work, args.pipeline_kills),
            19: lambda: row19(ex, work, args.readers),
            20: lambda: row20(ck, ex, work, args.fuzz20),
            21: lambda: by_pytest(21, "version_table"),
        }
        chosen = [int(n) for n in args.rows.split(",")] if args.rows else sorted(runs)
        rows = [runs[n]() for n in chosen]
    from cr_edge.profile.device import describe_device

    d = describe_device()
    block = "rows-" + ("-".join(map(str, chosen)) if args.rows else "all")  # one per selection
    with recorded("reliability", args.page, block=block, fenced=False):
        print(
            f"CPU: {d['cpu']} ({d['usable_cores']} usable cores), ISA: {', '.join(d['isa'])}; "
            f"onnxruntime {d['onnxruntime']}; load average at start {load}"
        )
        print()  # a paragraph, then the table: Markdown needs the blank line between them
        print("| # | fault | cases | crashes | partial files | canary reads | caught |")
        print("|---|---|---|---|---|---|---|")
        for r in rows:
            print(
                f"| {r.number} | {FAULTS[r.number]} | {r.cases} | {r.crashes} | {r.partial} | {r.canary} | {r.caught} |"
            )


if __name__ == "__main__":
    main()
