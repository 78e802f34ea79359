"""What the Horner lowering buys under ONNX Runtime, and what a CR net costs against ReLU.

One CR digits MLP (64-128-128-10, degree-3 per-channel polynomials) is trained briefly,
with its ReLU twin at equal width, and exported five ways, all run by ONNX Runtime's CPU EP:

  cr      ``cr-edge export --no-domain-guard``: Horner chains with the exact folds
  pow     the same trained weights, each polynomial written ``sum(a_k * x**k)`` (Pow nodes);
          normalisation folded into the first layer as in ``cr``, so only the polynomial differs
  relu    the ReLU twin, ``--no-domain-guard`` (it has no polynomial to guard)
  guard   the default export: ``cr`` with the domain guard (a Max/Min pair per polynomial)
  clip    ``ExportOptions(clip_guard=True)``: the guard as one scalar Clip per polynomial,
          each channel's range rescaled onto [-1, 1] in the previous layer
  linear  the floor of any activation in standard ONNX ops: ``cr``'s folded layers with no
          activation at all (Gemm -> Gemm), what ReLU costs once onnxruntime fuses it into
          the Gemm (FusedGemm); t(guard)/t(linear) is what the chain and guard cost on top

Sides are interleaved (cr pow relu guard clip linear, cr pow ...) so that drift in the machine's speed
hits all of them alike; each ratio is taken within a round, and the table reports its
median and p10-p90 over the rounds, at batch 1 and 256, with 1 intra-op thread and with
ONNX Runtime's default thread count.

Run from the repository root: ``python -m bench.horner [--epochs N] [--rounds N]``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cr_edge.checkpoint import load_checkpoint
from cr_edge.export.exporter import ExportOptions, ExportResult, export, lower
from cr_edge.export.folds import (
    MAX_SHIFT_RANGES,
    MIN_LEADING_SHARE,
    fold_input_normalisation,
    leading_share,
    run_passes,
)
from cr_edge.export.stages import Affine, Flatten, Poly, Stage, stages_from_checkpoint
from cr_edge.npz import read_npz
from cr_edge.poly import PolyAct
from cr_edge.profile.device import describe_device
from cr_edge.recipe import load_recipe
from cr_edge.train import train

SIDES = ("cr", "pow", "relu", "guard", "clip", "linear")
# (numerator, denominator, label, target): each row is t(numerator) / t(denominator).
RATIOS = (
    ("pow", "cr", "Horner speedup  t(Pow)/t(Horner)", ">= 5 @256"),
    ("guard", "relu", "CR vs ReLU      t(default CR)/t(ReLU)", "<= 1.15"),
    ("cr", "relu", "  without guard t(CR)/t(ReLU)", ""),
    ("guard", "cr", "guard cost      t(guard)/t(no guard)", "<= 1.05"),
    ("clip", "relu", "CR, Clip guard  t(clip)/t(ReLU)", "<= 1.15"),
    ("clip", "cr", "Clip guard cost t(clip)/t(no guard)", "<= 1.05"),
    ("relu", "linear", "ReLU vs none    t(ReLU)/t(no activation)", ""),
    ("guard", "linear", "CR vs none      t(default CR)/t(no act.)", ""),
)
BATCHES = (1, 256)
INNER = {1: 200, 256: 20}  # calls per side per round: each side runs ~2-10 ms per round


class NaivePolyNet(nn.Module):
    """Linear layers and ``sum_k a_k * x**k``: the polynomial as a user would first write it."""

    def __init__(self, stages: list[Stage]) -> None:
        super().__init__()
        self.ops: list[tuple[str, int]] = []
        for i, stage in enumerate(stages):
            if isinstance(stage, Affine):
                self._buffers_from(i, weight=stage.weight, bias=stage.bias)
                self.ops.append(("linear", i))
            elif isinstance(stage, Poly):
                self._buffers_from(i, coeffs=stage.coeffs)
                self.ops.append(("poly", i))
            elif isinstance(stage, Flatten):
                self.ops.append(("flatten", i))
            else:
                raise TypeError(f"stage {i} ({type(stage).__name__}) is not in an MLP")

    def _buffers_from(self, i: int, **arrays: np.ndarray) -> None:
        for name, value in arrays.items():
            self.register_buffer(f"{name}{i}", torch.tensor(value, dtype=torch.float32))

    def forward(self, x: Tensor) -> Tensor:
        for op, i in self.ops:
            if op == "flatten":
                x = torch.flatten(x, 1)
            elif op == "linear":
                x = F.linear(x, getattr(self, f"weight{i}"), getattr(self, f"bias{i}"))
            else:
                a = getattr(self, f"coeffs{i}")
                x = sum(a[k] * x**k for k in range(a.shape[0]))
        return x


def train_pair(root: Path, epochs: int) -> dict[str, Path]:
    """The CR MLP and its ReLU twin, both 64-128-128-10, trained for ``epochs``."""
    cr = load_recipe("digits-cr").replace(hidden=(128, 128), degree=3, epochs=epochs)
    relu = load_recipe("digits-relu").replace(hidden=(128, 128), epochs=epochs)
    return {
        "cr": train(cr, root / "cr-checkpoint").checkpoint,
        "relu": train(relu, root / "relu-checkpoint").checkpoint,
    }


def export_naive(checkpoint: Path, path: Path) -> None:
    """The trained CR net with its normalisation folded and each polynomial through Pow."""
    stages = stages_from_checkpoint(load_checkpoint(checkpoint))
    stages = run_passes(stages, (fold_input_normalisation,)).stages
    example = torch.from_numpy(read_npz(checkpoint / "calib.npz", ("x",))["x"][:2].copy())
    batch = torch.export.Dim("batch", min=1)
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            NaivePolyNet(stages).eval(),
            (example,),
            dynamo=True,
            opset_version=17,
            dynamic_shapes=({0: batch},),
            input_names=["x"],
            output_names=["y"],
        )
    program.save(str(path))


def export_linear(cr: Path, path: Path) -> None:
    """``cr`` with every elementwise node bypassed: its Gemms only, same weights and shapes."""
    model = onnx.load(cr)
    graph = model.graph
    keep, rename = [], {}
    for node in graph.node:
        ins = [rename.get(i, i) for i in node.input]
        if node.op_type in ("Mul", "Add", "Min", "Max", "Clip"):
            rename[node.output[0]] = ins[0]
            continue
        del node.input[:]
        node.input.extend(ins)
        keep.append(node)
    for out in graph.output:
        if out.name in rename:
            keep.append(onnx.helper.make_node("Identity", [rename[out.name]], [out.name]))
    del graph.node[:]
    graph.node.extend(keep)
    onnx.save(model, path)


def build(root: Path, epochs: int) -> tuple[dict[str, Path], ExportResult, Path]:
    """The six ONNX files, the CR export's result and the CR checkpoint (for the summary)."""
    ckpt = train_pair(root, epochs)
    plain = ExportOptions(domain_guard=False, companion=False)
    cr = export(ckpt["cr"], root / "cr", plain)
    export(ckpt["relu"], root / "relu", plain)
    export(ckpt["cr"], root / "guard", ExportOptions(companion=False))
    export(ckpt["cr"], root / "clip", ExportOptions(companion=False, clip_guard=True))
    export_naive(ckpt["cr"], root / "pow.onnx")
    export_linear(root / "cr" / "model.onnx", root / "linear.onnx")
    paths = {s: root / s / "model.onnx" for s in ("cr", "relu", "guard", "clip")}
    paths["pow"] = root / "pow.onnx"
    paths["linear"] = root / "linear.onnx"
    return paths, cr, ckpt["cr"]


def session(path: Path, threads: int) -> ort.InferenceSession:
    """Default graph optimisation (all levels); ``threads=0`` is ONNX Runtime's default."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def measure(
    paths: dict[str, Path], x: np.ndarray, threads: int, rounds: int
) -> dict[str, list[float]]:
    """Seconds per call of every side, one value per round, sides interleaved within a round."""
    sessions = {side: session(paths[side], threads) for side in SIDES}
    feed, inner = {"x": x}, INNER[x.shape[0]]
    for sess in sessions.values():  # warm up: first runs allocate and pick kernels
        for _ in range(5):
            sess.run(None, feed)
    times: dict[str, list[float]] = {side: [] for side in SIDES}
    for _ in range(rounds):
        for side in SIDES:
            run = sessions[side].run
            start = time.perf_counter()
            for _ in range(inner):
                run(None, feed)
            times[side].append((time.perf_counter() - start) / inner)
    return times


def ratio_row(times: dict[str, list[float]], num: str, den: str) -> tuple[float, float, float]:
    per_round = [a / b for a, b in zip(times[num], times[den], strict=True)]
    p10, p90 = np.percentile(per_round, [10, 90])
    return statistics.median(per_round), float(p10), float(p90)


def op_counts(path: Path) -> str:
    counts: dict[str, int] = {}
    for node in onnx.load(path).graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return ", ".join(f"{op} {n}" for op, n in sorted(counts.items()))


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


def print_summary(paths: dict[str, Path], cr: ExportResult, checkpoint: Path, epochs: int) -> None:
    device = describe_device()
    print(f"{device['cpu']}, {device['usable_cores']} usable cores, {' '.join(device['isa'])}")
    print(f"load average at start: {' '.join(f'{v:.1f}' for v in os.getloadavg())}")
    print(f"CR digits MLP 64-128-128-10, degree 3, {epochs} epochs; ReLU twin at equal width")
    print(f"onnxruntime {ort.__version__}, CPU EP, default graph optimisation (ORT_ENABLE_ALL)")
    print(f"fold summary: Horner Mul/Add nodes per polynomial layer: {cr.horner_nodes}")
    blockers = shift_blockers(checkpoint)
    for layer, spread in enumerate(leading_coefficients(checkpoint), start=1):
        print(f"  layer {layer} |a_3| over channels: {spread}; shift: {blockers[layer - 1]}")
    for refusal in cr.refusals or ["none"]:
        print(f"  refused: {refusal}")
    for side in SIDES:
        print(f"  {side:5s} graph: {op_counts(paths[side])}")


def print_table(results: list[tuple[int, str, dict[str, list[float]]]]) -> None:
    header = f"{'ratio':38s} {'batch':>5s} {'threads':>7s} {'median':>7s} {'p10-p90':>13s}  target"
    print(header)
    print("-" * len(header))
    for num, den, label, target in RATIOS:
        for batch, threads, times in results:
            med, p10, p90 = ratio_row(times, num, den)
            print(
                f"{label:38s} {batch:5d} {threads:>7s} {med:7.2f} {p10:6.2f}-{p90:<6.2f}  {target}"
            )
    print()
    print(f"{'median time per call (us)':38s} {'batch':>5s} {'threads':>7s}  " + "  ".join(SIDES))
    for batch, threads, times in results:
        cells = "  ".join(f"{statistics.median(times[s]) * 1e6:.1f}" for s in SIDES)
        print(f"{'':38s} {batch:5d} {threads:>7s}  {cells}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=15, help="training epochs per net")
    parser.add_argument("--rounds", type=int, default=40, help="interleaved rounds per setting")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="cr-edge-horner-") as tmp:
        paths, cr, checkpoint = build(Path(tmp), args.epochs)
        print_summary(paths, cr, checkpoint, args.epochs)
        x_all = read_npz(Path(tmp) / "cr-checkpoint" / "calib.npz", ("x",))["x"].astype(np.float32)
        results = []
        for batch in BATCHES:
            x = np.ascontiguousarray(x_all[np.arange(batch) % len(x_all)])
            for threads in (1, 0):
                label = "1" if threads else "default"
                results.append((batch, label, measure(paths, x, threads, args.rounds)))
        print()
        print_table(results)
        print(f"load average at end: {' '.join(f'{v:.1f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
