"""Quantized against fp32 for every zoo recipe, side by side in one run, on this machine's CPU.

For each recipe (trained here, then exported) three quantized versions are measured:

  chosen       ``cr-edge quantize --mode auto`` (what it keeps; "fp32" when nothing
               qualified, then the row shows the best-passing candidate it refused)
  naive int8   static QDQ of every node, no equalization (``--poly int8 --no-equalize``)
  ort-default  ``onnxruntime.quantization.quantize_dynamic`` with all its defaults
               (u8 activations x s8 weights: the kernel that saturates without VNNI)

Each is judged three ways (this CPU's onnxruntime, exact integer maths, and the
other CPUs: the AVX2 u8s8 emulation, MatMulNBits' float kernel of ARM64 without
dotprod, fp16 accumulation); "ok" is pass only if all pass. Errors are max |y - oracle|
/ atol at batch 1 and 64 on this CPU; "other CPUs" is the worst of the third way's
errors (an "unjudged" way shows in "ok" only). Latency is one
thread, fp32 and quantized runs interleaved in rounds (``cr_edge.profile.timing``),
the median per-round ratio with its p10-p90. Figures differ by CPU: the header names
this one and its ISA flags.

The zoo models hold a few thousand weights; ``digits-cr@512x512`` is the
weights-dominated case, and ``digits-cr#S`` retrains digits-cr with seed ``S``;
``yelp-full-cr`` trains on a generated review corpus of its shape (``--reviews``), its
embedding table nearly all of it. Beside the chosen model every MatMulNBits candidate
(``nb8`` at accuracy levels 4 and 0, ``nb4``) gets its own row.

Run from the repository root: ``python -m bench.quantize [--epochs N] [--recipes a,b]
[--page]``; ``--page`` rewrites the quantization and pipeline tables of
``docs/benchmarks/quantize.md`` between their ``<!-- bench.quantize:NAME -->`` markers.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from onnxruntime.quantization import quantize_dynamic

from bench.pages import add_page_option, load_average, machine, splice
from cr_edge.artifacts.metadata import key
from cr_edge.data import BUILTINS
from cr_edge.export.exporter import export
from cr_edge.quantize import measure as qm
from cr_edge.quantize.gemm_to_matmul import gemm_to_matmul
from cr_edge.quantize.judge import AtBatch, three_ways
from cr_edge.quantize.policy import NBITS, QuantConfig, QuantPolicy
from cr_edge.quantize.quantizer import QuantizeResult, Tried, quantize
from cr_edge.quantize.secant import min_cosine, noise_floor, secant, secant_displacement
from cr_edge.recipe import load_recipe, zoo_names
from cr_edge.train.loop import train
from cr_edge.validate.oracle import load_oracle
from tests.review_corpus import write_review_corpus

WIDE = "digits-cr@512x512"
TEXT = "yelp-full-cr"  # on a generated corpus of its shape (65,536 x 48 table), see --reviews
SEEDS = ("digits-cr#1", "digits-cr#2", "digits-cr#3")
NAIVE = "static/int8/minmax/no-eq"
HEADER = (
    "recipe",
    "model",
    "size",
    "acc drop pts",
    "err b1",
    "err b64",
    "other CPUs",
    "jvp cos",
    "secant cos",
    "t b1",
    "t b64",
    "ok",
)


def _ratio(lat: dict[str, float]) -> str:
    return f"{lat['ratio']:.2f} ({lat['ratio_p10']:.2f}-{lat['ratio_p90']:.2f})"


def _err(ways, prefix: str, batch: str) -> str:
    """err/atol of the way ``prefix`` at ``batch`` ("b1", "b64"), or its batch-free run."""
    for w in ways:
        name = w.name.split()
        if name[0] == prefix and (len(name) == 1 or name[1] == batch):
            return f"{w.parity.max_abs_err / w.parity.atol:.2f}"
    return "-"


def _other_cpus(ways) -> str:
    """The worst err/atol of the ways that stand for other CPUs (AVX2 emulated at batch 1 or
    batch-free, ARM64 without dotprod, fp16 accumulation); "-" where none was run."""
    other = [
        w.parity.max_abs_err / w.parity.atol
        for w in ways
        if w.name in ("avx2", "avx2 b1", "no-dotprod") or w.name.startswith("fp16 hw")
    ]
    return f"{max(other):.2f}" if other else "-"


def _row(name: str, label: str, t: Tried, result: QuantizeResult, ok: str) -> tuple[str, ...]:
    p = t.parity
    regression = result.fp32_accuracy is None or t.accuracy is None
    return (
        name,
        label,
        f"{t.bytes / result.fp32_bytes:.2f}x",
        "-" if regression else f"{100 * (result.fp32_accuracy - t.accuracy):.2f}",
        _err(t.ways, "onnxruntime", "b1"),
        _err(t.ways, "onnxruntime", "b64"),
        _other_cpus(t.ways),
        "-" if p.jvp_min_cos is None else f"{p.jvp_min_cos:.4f}",
        "-" if t.secant_cos is None else f"{t.secant_cos:.4f}",
        _ratio(t.latency[1]),
        _ratio(t.latency[64]),
        ok,
    )


def _ort_default(name: str, ex: Path, result: QuantizeResult, calib: np.ndarray) -> tuple:
    """``quantize_dynamic`` with every default: what a user gets without cr-edge's policies."""
    model = onnx.load(ex / "model.onnx")
    with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stdout(io.StringIO()):
        src, dst = Path(tmp) / "in.onnx", Path(tmp) / "out.onnx"
        onnx.save(gemm_to_matmul(model), src)
        quantize_dynamic(src, dst)
        q = onnx.load(dst)
    oracle = load_oracle(ex / "model.ref.npz")
    meta = {"cr_edge.precision": "int8", **_step_of(result)}
    ways, _ = three_ways(q, None, meta, oracle)
    f, s = qm.session(model), qm.session(q)
    x, d = oracle.x, secant_displacement(calib, oracle.v)
    ref = secant(AtBatch(qm.as_session(f), 1), x, d)
    task = {p.key: p.value for p in model.metadata_props}
    floor = noise_floor(task, float(meta[key("output_step")]), int(np.prod(ref.shape[1:])))
    sec = min_cosine(secant(AtBatch(qm.as_session(s), 1), x, d), ref, floor)
    lat = {b: qm.latency_ratio(f, s, np.resize(x, (b, *x.shape[1:]))) for b in (1, 64)}
    acc = None
    if result.fp32_accuracy is not None:  # regression: parity is the measure
        acc = qm.accuracy(s, oracle.extra["x_test"], oracle.extra["y_test"])
    t = Tried(
        QuantPolicy("dynamic"), len(q.SerializeToString()), ways[0].parity, acc, lat,
        all(w.parity.ok for w in ways), "", q, None, ways, sec,
    )  # fmt: skip
    failed = [w.name for w in ways if not w.parity.ok]
    return _row(
        name, "ort-default", t, result, "pass" if not failed else "FAIL " + ",".join(failed)
    )


def _step_of(result: QuantizeResult) -> dict[str, str]:
    """The int8 output step auto used, so ort-default is judged by the same atol."""
    meta = {p.key: p.value for p in result.tried[0].model.metadata_props}
    return {k: v for k, v in meta.items() if k == key("output_step")}


def _failed(t: Tried) -> str:
    failed = [w.name for w in t.ways if not w.parity.ok]
    if t.passed:
        return "pass"
    return "FAIL " + (",".join(failed) if failed else t.why.split(":")[0][:30])


def rows_for(name: str, ck: Path, ex: Path, work: Path) -> tuple[list[tuple], str]:
    """The three rows of one recipe, and the line saying what auto kept and why."""
    calib = ck / "calib.npz"
    result = quantize(ex / "model.onnx", QuantConfig(work / "auto", QuantPolicy("auto"), calib))
    chosen = result.chosen
    if chosen is None:
        passing = [t for t in result.tried if t.passed]
        shown = min(passing, key=lambda t: t.bytes) if passing else result.tried[0]
        label, ok, why = (
            f"fp32 (best: {shown.policy.tag})",
            "kept fp32",
            f"{name}: {result.notes[-1]}",
        )
    else:
        shown, label, ok = chosen, chosen.policy.tag, "pass"
        why = f"{name}: auto kept {chosen.policy.label} ({chosen.why})"
    naive = next(t for t in result.tried if t.policy.label == NAIVE)
    rows = [
        _row(name, label, shown, result, ok),
        _row(name, "naive int8", naive, result, _failed(naive)),
    ]
    # the MatMulNBits candidates, each level and nb4, whether kept or not (their figures)
    nbits = [t for t in result.tried if t.policy.mode in NBITS and t is not shown]
    rows += [_row(name, t.policy.label, t, result, _failed(t)) for t in nbits]
    x = np.load(calib)["x"]
    if x.dtype != np.int64:  # token ids: quantize_dynamic's defaults would take the table too
        rows.append(_ort_default(name, ex, result, x))
    return rows, why


def table(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(r[i]) for r in [HEADER, *rows]) for i in range(len(HEADER))]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
        for row in [HEADER, tuple("-" * w for w in widths), *rows]
    ]
    return "\n".join(lines)


def _recipe(name: str, epochs: int | None, work: Path | None = None, reviews: int = 0):
    """``name``'s recipe; a Yelp-format recipe whose data is not here (yelp-full-cr) trains on a
    generated corpus of ``reviews`` reviews in Yelp's layout, written under ``work``."""
    base, _, widths = name.partition("@")
    base, _, seed = base.partition("#")
    recipe = load_recipe(base)
    if widths:
        recipe = recipe.replace(hidden=tuple(int(w) for w in widths.split("x")))
    if seed:
        recipe = recipe.replace(seed=int(seed))
    if work is not None and recipe.data_format == "yelp" and not Path(recipe.data).is_file():
        (work / "data").mkdir(parents=True, exist_ok=True)
        data = write_review_corpus(work / "data" / "train.csv", reviews, layout="yelp")
        recipe = recipe.replace(data=str(data))
    return recipe.replace(epochs=epochs) if epochs else recipe


def pipeline_table() -> str:
    """``cr-edge pipeline`` on digits-cr, its closing table as printed."""
    from rich.console import Console

    from cr_edge.cli import terminal
    from cr_edge.pipeline import run_pipeline

    with tempfile.TemporaryDirectory(prefix="bench-pipeline-") as tmp:
        run = Path(tmp) / "run"
        result = run_pipeline(load_recipe("digits-cr"), run)
    console = Console(width=100, record=True, file=io.StringIO())
    previous, terminal._stdout = terminal._stdout, console
    try:
        terminal.print_summary(result.summary, result.out)
    finally:
        terminal._stdout = previous
    # the folder as a user's run would name it, not this run's temporary one
    return console.export_text().rstrip().replace(str(run), "runs/digits-cr")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, help="Shorten training (default: the recipe's).")
    parser.add_argument(
        "--recipes",
        default=",".join(
            [*(n for n in zoo_names() if load_recipe(n).data in BUILTINS), *SEEDS, WIDE, TEXT]
        ),
        help="Zoo names; NAME@AxB overrides the hidden widths, NAME#S the seed.",
    )
    parser.add_argument(
        "--reviews",
        type=int,
        default=20000,
        help="Reviews in the corpus generated for a Yelp recipe whose data is not here.",
    )
    add_page_option(parser, "quantize")
    args = parser.parse_args()
    logging.getLogger().setLevel(logging.ERROR)  # onnxruntime.quantization's advice lines
    rows, notes = [], []
    start, load_start = time.perf_counter(), load_average("at start")
    with tempfile.TemporaryDirectory(prefix="bench-quantize-") as tmp:
        for name in args.recipes.split(","):
            work = Path(tmp) / name
            train(_recipe(name, args.epochs, work, args.reviews), work / "ck", device="cpu")
            export(work / "ck", work / "ex")
            got, why = rows_for(name, work / "ck", work / "ex", work)
            rows += got
            notes.append(why)
            elapsed = (time.perf_counter() - start) / 60
            print(f"{name}: {elapsed:.1f} min; {table(got)}", file=sys.stderr, flush=True)
    minutes = (time.perf_counter() - start) / 60
    run = f"{load_start}; {minutes:.1f} min for the table; {load_average('at end')}"
    legend = (
        "size: primal .onnx / fp32; acc drop: test-split accuracy points; err: max |y - oracle| / atol "
        "(int8: 3 output steps) at batch 1 and 64 on this CPU; other CPUs: the worst of the emulated "
        "AVX2 u8s8 kernel at batch 1, MatMulNBits in float (ARM64 without dotprod) and fp16 "
        "accumulation's worst order; "
        "jvp cos: least per-sample cosine of the companion's JVP with PyTorch's; secant cos: the "
        "deployed primal's secant vs fp32's at 4 input steps; t: median quantized/fp32 "
        "(p10-p90), 1 thread, interleaved rounds"
    )
    body = "\n".join([machine(), run, "", table(rows), "", *notes, "", legend])
    print(body)
    if args.page:
        splice("quantize", "quantization", body)
        splice("quantize", "pipeline", machine() + "\n\n" + pipeline_table())


if __name__ == "__main__":
    main()
