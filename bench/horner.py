"""What the Horner lowering buys, what a CR net costs against ReLU, and where the floor is.

One CR digits MLP (64-128-128-10, degree-3 per-channel polynomials) is trained briefly,
with its ReLU twin at equal width, and run as these sides, all in one interleaved loop.

onnxruntime, CPU EP (ORT_ENABLE_ALL, so ReLU is fused into its Gemm as FusedGemm):

  cr        ``cr-edge export --no-domain-guard``: Horner chains with the exact folds
  pow       the same trained weights, each polynomial ``sum(a_k * x**k)`` (Pow nodes);
            normalisation folded into the first layer as in ``cr``, so only the polynomial differs
  relu      the ReLU twin, ``--no-domain-guard`` (it has no polynomial to guard)
  clip      the default export, with its domain guard: one scalar Clip per polynomial
  guard     ``cr-edge export --minmax-guard``: the guard as a per-channel Max/Min pair
  linear    the Gemms alone, no activation: the floor of any activation
  proxy     the Gemms with one ``Mul(z, z)`` per layer, which onnxruntime does not fuse (the
            summary prints the graph it runs): what a fused polynomial kernel in an EP would
            cost, one dispatch and the same tensor traffic; not the trained function
  min3      the fewest standard ops a cubic allows, ``(t * t + b) * t``, built from the trained
            weights (``bench.floor_nets``; the summary prints its parity against PyTorch)
  min3clip  ``min3`` behind one scalar ``Clip(t, -1, 1)``, its guard

ExecuTorch ``.pte``, XNNPACK delegate (cr-edge's own export, dynamic batch): ``pte-relu``,
``pte-cr``, ``pte-clip``, ``pte-guard`` (``formats=("executorch",)`` of the exports above) and
``pte-proxy``, ``pte-min3``, ``pte-min3clip``, ``pte-linear`` (the same modules as the ONNX
sides of those names). XNNPACK can fuse a clamp into the fully-connected op before it, and runs the
delegated graph in one call (each op an XNNPACK operator, not an onnxruntime kernel dispatch),
so this is where an EP may break the floor.

Each round runs every side ``--calls`` times (a tenth of that at batch 256), the order
alternating between rounds (``cr_edge.profile.timing``), so drift in the machine's speed hits
all sides alike; each ratio is taken per round, and the table gives its median and p10-p90
over the rounds, at batch 1 and 256, with 1 thread and with each runtime's default.

Run from the repository root: ``python -m bench.horner [--epochs N] [--calls N]``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch

from bench.floor_nets import depressed_stages, export_onnx, export_program
from bench.pages import add_page_option, load_average, machine, recorded
from cr_edge.artifacts.npz import read_npz
from cr_edge.checkpoint import load_checkpoint
from cr_edge.export.exporter import ExportOptions, ExportResult, export, lower
from cr_edge.export.folds import (
    MAX_SHIFT_RANGES,
    MIN_LEADING_SHARE,
    fold_input_normalisation,
    leading_share,
    run_passes,
)
from cr_edge.export.pte import Delegation
from cr_edge.export.stages import Poly
from cr_edge.poly import PolyAct
from cr_edge.profile.timing import ROUNDS, Timings, latency_stats, measure, ratio_stats
from cr_edge.profile.workload import fast_call, preload, with_threads
from cr_edge.recipe import load_recipe
from cr_edge.runtimes.executorch import sidecar_of
from cr_edge.runtimes.registry import get_runtime
from cr_edge.runtimes.safe_load import check_artifact
from cr_edge.train.loop import train

ORT_SIDES = ("cr", "pow", "relu", "guard", "clip", "linear", "proxy", "min3", "min3clip")
PTE_SIDES = (
    "pte-relu",
    "pte-cr",
    "pte-clip",
    "pte-guard",
    "pte-proxy",
    "pte-min3",
    "pte-min3clip",
    "pte-linear",
)
SIDES = ORT_SIDES + PTE_SIDES
# (numerator, denominator, label, target): each row is t(numerator) / t(denominator).
RATIOS = (
    ("pow", "cr", "Horner speedup  t(Pow)/t(Horner)", ">= 5 @256"),
    ("clip", "relu", "CR vs ReLU      t(default CR)/t(ReLU)", "<= 1.15"),
    ("cr", "relu", "  without guard t(CR)/t(ReLU)", ""),
    ("clip", "cr", "guard cost      t(Clip)/t(no guard)", "<= 1.05"),
    ("guard", "relu", "CR, Max/Min     t(minmax)/t(ReLU)", ""),
    ("guard", "cr", "Max/Min cost    t(minmax)/t(no guard)", "<= 1.05"),
    ("relu", "linear", "ReLU vs none    t(ReLU)/t(no activation)", ""),
    ("clip", "linear", "CR vs none      t(default CR)/t(no act.)", ""),
    ("proxy", "relu", "floor: 1 node/layer t(proxy)/t(ReLU)", "<= 1.15"),
    ("min3", "relu", "floor: 3 nodes  t(min3)/t(ReLU)", ""),
    ("min3clip", "relu", "floor: 3 + Clip t(min3clip)/t(ReLU)", "<= 1.15"),
    ("min3clip", "min3", "  its Clip      t(min3clip)/t(min3)", "<= 1.05"),
    ("pte-clip", "pte-relu", "XNNPACK CR/ReLU t(default CR)/t(ReLU)", "<= 1.15"),
    ("pte-cr", "pte-relu", "  without guard t(CR)/t(ReLU)", ""),
    ("pte-clip", "pte-cr", "  guard cost    t(Clip)/t(no guard)", "<= 1.05"),
    ("pte-guard", "pte-cr", "  Max/Min cost  t(minmax)/t(no guard)", "<= 1.05"),
    ("pte-proxy", "pte-relu", "  1 node/layer  t(proxy)/t(ReLU)", "<= 1.15"),
    ("pte-min3", "pte-relu", "  3 nodes       t(min3)/t(ReLU)", ""),
    ("pte-min3clip", "pte-relu", "  3 + Clip      t(min3clip)/t(ReLU)", "<= 1.15"),
    ("pte-min3clip", "pte-min3", "  its Clip      t(min3clip)/t(min3)", "<= 1.05"),
    ("pte-relu", "pte-linear", "  ReLU vs none  t(ReLU)/t(no act.)", ""),
    ("pte-relu", "relu", "XNNPACK vs ORT  t(.pte ReLU)/t(ORT ReLU)", ""),
    ("pte-clip", "clip", "XNNPACK vs ORT  t(.pte CR)/t(ORT CR)", ""),
    ("pte-clip", "relu", "CR .pte vs ORT ReLU t(.pte CR)/t(ReLU)", ""),
)
BATCHES = (1, 256)


@dataclass
class Built:
    """The sides' files and what the summary reports about them."""

    paths: dict[str, Path]
    cr: ExportResult
    clip: ExportResult
    guard: ExportResult
    checkpoint: Path
    programs: dict[str, Delegation]
    centre_notes: list[str]


def train_pair(root: Path, epochs: int) -> dict[str, Path]:
    """The CR MLP and its ReLU twin, both 64-128-128-10, trained for ``epochs``."""
    cr = load_recipe("digits-cr").replace(hidden=(128, 128), degree=3, epochs=epochs)
    relu = load_recipe("digits-relu").replace(hidden=(128, 128), epochs=epochs)
    return {
        "cr": train(cr, root / "cr-checkpoint").checkpoint,
        "relu": train(relu, root / "relu-checkpoint").checkpoint,
    }


def build(root: Path, epochs: int) -> Built:
    """Every side's ONNX file or ``.pte`` program, exported from one trained pair."""
    ckpt = train_pair(root, epochs)
    both = ("onnx", "executorch")
    plain = ExportOptions(domain_guard=False, companion=False, formats=both)
    cr = export(ckpt["cr"], root / "cr", plain)
    relu = export(ckpt["relu"], root / "relu", plain)
    minmax = ExportOptions(companion=False, clip_guard=False, formats=both)
    guard = export(ckpt["cr"], root / "guard", minmax)
    clip = export(ckpt["cr"], root / "clip", ExportOptions(companion=False, formats=both))
    paths = {
        "cr": cr.files["onnx"],
        "relu": relu.files["onnx"],
        "guard": guard.files["onnx"],
        "clip": clip.files["onnx"],
        "pte-cr": cr.files["pte"],
        "pte-relu": relu.files["pte"],
        "pte-clip": clip.files["pte"],
        "pte-guard": guard.files["pte"],
    }
    loaded = load_checkpoint(ckpt["cr"])
    calib_x = loaded.calib()["x"]
    example = torch.from_numpy(calib_x[:2].copy())
    unfolded, _ = lower(loaded, ExportOptions(fold=False), calib_x)  # guarded, in z
    unfolded = run_passes(unfolded, (fold_input_normalisation,)).stages
    minimal, notes = depressed_stages(unfolded)
    onnx_kinds = {
        "pow": (unfolded, "pow"),
        "linear": (minimal, "none"),
        "proxy": (minimal, "square"),
        "min3": (minimal, "depressed"),
        "min3clip": (minimal, "depressed-clip"),
    }
    for side, (stages, kind) in onnx_kinds.items():
        paths[side] = export_onnx(stages, kind, example, root / f"{side}.onnx")
    programs = {
        s: _sidecar_delegation(paths[s]) for s in ("pte-cr", "pte-relu", "pte-clip", "pte-guard")
    }
    for side in ("pte-proxy", "pte-min3", "pte-min3clip", "pte-linear"):
        stages, kind = onnx_kinds[side.removeprefix("pte-")]
        program = export_program(stages, kind, example, root / f"{side}.pte")
        paths[side], programs[side] = program.path, program.delegation
    return Built(paths, cr, clip, guard, ckpt["cr"], programs, notes)


def _sidecar_delegation(pte: Path) -> Delegation:
    info = json.loads(sidecar_of(pte).read_text())["delegation"]
    return Delegation(**info)


def runners(paths: dict[str, Path], x: np.ndarray, threads: int, warmup: int) -> tuple[list, list]:
    """``(fn, arg)`` per side in ``SIDES`` order, and the sessions (alive while timed).

    onnxruntime runs through IOBinding and ExecuTorch on inputs converted once
    (``cr_edge.profile.workload.fast_call``), as ``cr-edge profile`` times them; ``threads=0``
    is each runtime's default (ExecuTorch: one thread for programs this small).
    """
    count = threads or None
    ort_rt = with_threads(get_runtime("cpu"), count)
    et_rt = with_threads(get_runtime("executorch-xnnpack"), count)
    preload(et_rt)
    sessions = [(et_rt if s in PTE_SIDES else ort_rt).load(check_artifact(paths[s])) for s in SIDES]
    fns = [fast_call(s, {"x": x}) for s in sessions]
    for fn, arg in fns:  # warm up: first runs allocate and pick kernels
        for _ in range(warmup):
            fn(arg)
    return fns, sessions


def time_sides(paths: dict[str, Path], x: np.ndarray, threads: int, calls: int) -> Timings:
    """Every side ``calls`` times in each of ``ROUNDS`` rounds, interleaved, order alternating."""
    fns, _sessions = runners(paths, x, threads, calls)
    return measure(fns, calls * ROUNDS, None, 1.0)


def optimized_op_counts(path: Path, root: Path) -> str:
    """The graph as onnxruntime runs it (ORT_ENABLE_ALL, CPU EP): which nodes it fused."""
    options = ort.SessionOptions()
    options.log_severity_level = 3  # not the warning that an ENABLE_ALL graph is CPU-specific
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.optimized_model_filepath = str(root / f"{path.stem}.{path.parent.name}.opt.onnx")
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return op_counts(Path(options.optimized_model_filepath))


def op_counts(path: Path) -> str:
    counts: dict[str, int] = {}
    for node in onnx.load(path).graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return ", ".join(f"{op} {n}" for op, n in sorted(counts.items()))


def run_onnx(path: Path, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})[0]


def agreement(y: np.ndarray, ref: np.ndarray) -> str:
    err = np.abs(y - ref).max() / np.abs(ref).max()
    return f"max |dy| / max |y| {err:.1e}, argmax agreement {(y.argmax(1) == ref.argmax(1)).mean():.1%}"


def parity_lines(built: Built) -> list[str]:
    """How exact the 3-node refold is: ``min3`` against PyTorch on the unguarded export's
    oracle inputs; ``min3clip`` against ``min3`` on the calibration inputs, inside every
    guard (its symmetric guard is wider than the export's, so past the data the two differ)."""
    ref = read_npz(built.cr.files["ref"], ("x", "y"))
    calib = read_npz(built.checkpoint / "calib.npz", ("x",))["x"].astype(np.float32)
    inside = run_onnx(built.paths["min3"], calib)
    return [
        f"min3 vs PyTorch, {len(ref['x'])} oracle inputs: "
        + agreement(run_onnx(built.paths["min3"], ref["x"]), ref["y"]),
        f"min3clip vs min3, {len(calib)} calibration inputs: "
        + agreement(run_onnx(built.paths["min3clip"], calib), inside),
    ]


def leading_coefficients(checkpoint: Path) -> list[str]:
    """Per layer, the spread of |a_3|: the GELU fit starts it at 0, and the folds divide by it."""
    rows = []
    for block in load_checkpoint(checkpoint).net.blocks:
        if isinstance(block, PolyAct):
            a3 = block.coeffs[-1].detach().abs().numpy()
            rows.append(f"min {a3.min():.1e}, median {np.median(a3):.1e}")
    return rows


def shift_blockers(checkpoint: Path) -> list[str]:
    """Per layer, the channels that refuse the depressed shift, for either reason the fold
    gives: ``|a_3|`` is dust over the range, or the shift ``a_2 / 3 a_3`` is too far away.
    One such channel keeps the layer's ``a_2`` Add, so the count says how far the fold is."""
    ckpt = load_checkpoint(checkpoint)
    options = ExportOptions(domain_guard=False, fold=False)
    rows = []
    for poly in (s for s in lower(ckpt, options, ckpt.calib()["x"])[0] if isinstance(s, Poly)):
        a, r = poly.coeffs, np.maximum(np.abs(poly.lo), np.abs(poly.hi))
        dust = leading_share(poly) < MIN_LEADING_SHARE
        far = ~dust & (np.abs(a[-2] / (poly.degree * a[-1])) > MAX_SHIFT_RANGES * r)
        rows.append(f"{dust.sum()} of {dust.size} |a_3| too small, {far.sum()} shift too far")
    return rows


def print_summary(built: Built, root: Path, epochs: int) -> None:
    print(machine())
    print(load_average("at start"))
    print(f"CR digits MLP 64-128-128-10, degree 3, {epochs} epochs; ReLU twin at equal width")
    print(
        f"onnxruntime {ort.__version__}, CPU EP, ORT_ENABLE_ALL, IOBinding; "
        f"executorch {metadata.version('executorch')}, XNNPACK, inputs converted once"
    )
    print(f"fold summary: Horner Mul/Add nodes per polynomial layer: {built.cr.horner_nodes}")
    print(f"  default export (clip side): {built.clip.horner_nodes} nodes + its Clip")
    print(f"  --minmax-guard (guard side): {built.guard.horner_nodes} nodes + Max/Min")
    blockers = shift_blockers(built.checkpoint)
    for layer, spread in enumerate(leading_coefficients(built.checkpoint), start=1):
        print(f"  layer {layer} |a_3| over channels: {spread}; shift: {blockers[layer - 1]}")
    for refusal in dict.fromkeys(
        built.cr.refusals + built.clip.refusals + built.guard.refusals
    ) or ["none"]:
        print(f"  refused: {refusal}")
    print("the 3-node form built from the trained weights (min3, min3clip):")
    for note in built.centre_notes:
        print(f"  {note}")
    for line in parity_lines(built):
        print(f"  {line}")
    print("graphs: as exported -> as onnxruntime runs them (ORT_ENABLE_ALL)")
    for side in ORT_SIDES:
        path = built.paths[side]
        print(f"  {side:8s} {op_counts(path)}  ->  {optimized_op_counts(path, root)}")
    print("programs: nodes inside XNNPACK / left to portable kernels, per op")
    for side in PTE_SIDES:
        d = built.programs[side]
        ops = ", ".join(
            f"{op.removeprefix('aten_').removesuffix('_default')} {v['delegated']}"
            + (f"+{v['portable']}p" if v["portable"] else "")
            for op, v in d.ops.items()
        )
        print(f"  {side:12s} {d.subgraphs} subgraph(s), {d.delegated} / {d.portable}: {ops}")


def print_table(results: list[tuple[int, str, Timings]]) -> None:
    header = f"{'ratio':40s} {'batch':>5s} {'threads':>7s} {'median':>7s} {'p10-p90':>13s}  target"
    print(header)
    print("-" * len(header))
    medians = [
        (b, t, [timings.round_medians(k) for k in range(len(SIDES))]) for b, t, timings in results
    ]
    for num, den, label, target in RATIOS:
        for batch, threads, per_side in medians:
            r = ratio_stats(per_side[SIDES.index(den)], per_side[SIDES.index(num)])
            print(
                f"{label:40s} {batch:5d} {threads:>7s} {r['ratio']:7.2f} "
                f"{r['p10']:6.2f}-{r['p90']:<6.2f}  {target}"
            )
    print()
    settings = "  ".join(f"b{b:<3d} {t:>7s}" for b, t, _ in results)
    print(f"{'p50 per call (us)':13s} {settings}")
    for k, side in enumerate(SIDES):
        cells = "  ".join(
            f"{latency_stats(timings.samples_ns[k], b)['p50_ms'] * 1e3:12.1f}"
            for b, _, timings in results
        )
        print(f"{side:13s} {cells}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=15, help="training epochs per net")
    parser.add_argument(
        "--calls", type=int, default=200, help="calls per side per round at batch 1 (256: a tenth)"
    )
    add_page_option(parser, "horner")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="cr-edge-horner-") as tmp:
        root = Path(tmp)
        built = build(root, args.epochs)
        print_summary(built, root, args.epochs)
        x_all = read_npz(built.checkpoint / "calib.npz", ("x",))["x"].astype(np.float32)
        results = []
        for batch in BATCHES:
            x = np.ascontiguousarray(x_all[np.arange(batch) % len(x_all)])
            calls = max(1, args.calls // (10 if batch > 1 else 1))
            for threads in (1, 0):
                label = "1" if threads else "default"
                results.append((batch, label, time_sides(built.paths, x, threads, calls)))
        print()
        print(f"{ROUNDS} interleaved rounds per setting, order alternating; ratios per round")
        print_table(results)
        print(load_average("at end"))


if __name__ == "__main__":
    with recorded("horner", "--page" in sys.argv[1:]):
        main()
