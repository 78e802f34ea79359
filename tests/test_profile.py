"""`cr-edge profile`: figures that agree with each other, interleaved comparison, no torch.

Times are never compared with fixed numbers (the machine decides them); the tests
check the relations between the figures: ordered percentiles, throughput equal to
batch / mean latency, sizes equal to the files' sizes, a self-comparison around 1.
The CR model is a one-epoch digits-cr export; its int8 twin comes from onnxruntime's
``quantize_dynamic`` and the ``.ort`` files from onnxruntime's own ORT-format writer.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from cr_edge.errors import InputError
from cr_edge.export.mobile import convert_to_ort
from cr_edge.profile import view as profile_view
from cr_edge.profile.device import _cpuinfo, _isa
from cr_edge.profile.perop import summarize
from cr_edge.profile.profiler import ProfileOptions, profile
from cr_edge.profile.timing import latency_stats, ratio_stats
from cr_edge.profile.workload import make_feeds
from cr_edge.runtimes.registry import get_runtime
from cr_edge.runtimes.runtime import Session, TensorSpec
from cr_edge.runtimes.safe_load import check_artifact

FAST = {"warmup": 5, "iters": 60}
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def models(tmp_path_factory, checkpoint: Path) -> Path:
    """model.onnx/.ort (fp32), model.int8.onnx/.ort, and fixed.onnx with batch fixed to 1."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from cr_edge.export.exporter import ExportOptions, export

    out = tmp_path_factory.mktemp("profile") / "ex"
    export(checkpoint, out, ExportOptions(companion=False))
    quantize_dynamic(out / "model.onnx", out / "model.int8.onnx", weight_type=QuantType.QInt8)
    convert_to_ort(out / "model.onnx", level="basic")  # the level quantize --ort writes
    convert_to_ort(out / "model.int8.onnx", level="basic")
    fixed = onnx.load(out / "model.onnx")
    for value in (*fixed.graph.input, *fixed.graph.output):
        value.type.tensor_type.shape.dim[0].dim_value = 1
    onnx.save(fixed, out / "fixed.onnx")
    return out


@pytest.mark.parametrize("name", ["model.onnx", "model.int8.onnx"])
@pytest.mark.parametrize("runtime", ["cpu", "ort-mobile"])
def test_figures_are_internally_consistent(models: Path, name: str, runtime: str):
    report = profile([models / name], ProfileOptions(runtimes=runtime, batches=(1, 8), **FAST))
    assert [(r.runtime, r.batch) for r in report.rows] == [(runtime, 1), (runtime, 8)]
    for row in report.rows:
        lat = row.latency
        assert lat["count"] == FAST["iters"] == len(row.samples_ns)
        assert lat["min_ms"] <= lat["p10_ms"] <= lat["p50_ms"] <= lat["p90_ms"]
        assert lat["p90_ms"] <= lat["p99_ms"] <= lat["max_ms"]
        assert lat["min_ms"] <= lat["mean_ms"] <= lat["max_ms"]
        # throughput in samples/s: the samples over the summed run time, from the raw timings
        assert lat["throughput"] == pytest.approx(
            row.batch * lat["count"] / (sum(row.samples_ns) / 1e9), rel=1e-9
        )
        run_file = Path(row.file)
        assert run_file.suffix == (".ort" if runtime == "ort-mobile" else ".onnx")
        assert row.size_bytes == os.path.getsize(run_file)
        assert row.load_ms > 0 and row.first_ms > 0
        assert "VmHWM" in row.memory["method"] or "ru_maxrss" in row.memory["method"]
        assert 0 <= row.memory["load_kb"] <= row.memory["run_kb"]
        lim = row.limit  # the floor was timed in the same rounds: FLOPs read from the .onnx
        assert lim["flops_per_sample"] > 0 and lim["floor_ms"] > 0
        assert 0 < lim["dispatch_share"] <= 1 and 0 <= lim["arithmetic_share"] < 1
        # GFLOP/s is FLOP per nanosecond: the batch's FLOPs over the raw median run, in ns
        p50_ns = float(np.percentile(row.samples_ns, 50))
        assert lim["gflops"] == pytest.approx(
            lim["flops_per_sample"] * row.batch / p50_ns, rel=0.02
        )
    assert report.device["onnxruntime"] and "CPUExecutionProvider" in report.device["providers"]


def test_flops_are_counted_from_the_graph_and_the_floor_is_below_the_model(models: Path):
    """digits-cr 64-32-10: two Gemms, the Horner chain and its guard per hidden unit."""
    report = profile([models / "model.onnx"], ProfileOptions(memory=False, **FAST))
    (row,) = report.rows
    meta = {p.key: p.value for p in onnx.load(models / "model.onnx").metadata_props}
    (chain,) = json.loads(meta["cr_edge.horner_nodes"])
    ops = [n.op_type for n in onnx.load(models / "model.onnx").graph.node]
    guard = 1 if "Clip" in ops else 2  # one scalar Clip (the default) or a Max/Min pair
    by_hand = 2 * (64 * 32 + 32 * 10) + 32 * (chain + guard)
    assert row.limit["flops_per_sample"] == by_hand
    assert row.limit["floor_ms"] <= row.latency["p50_ms"]
    no_floor = profile([models / "model.onnx"], ProfileOptions(memory=False, floor=False, **FAST))
    assert no_floor.rows[0].limit is None


def test_a_pte_row_is_timed_against_the_floor_program_export_wrote(
    tmp_path: Path, checkpoint: Path
):
    """ExecuTorch rows: the twin is ``model.floor.pte`` (profile cannot build one without
    torch's exporter); a program without it has no floor, and says nothing false."""
    from cr_edge.export.exporter import ExportOptions, export

    out = tmp_path / "ex"
    export(checkpoint, out, ExportOptions(companion=False, formats=("executorch",)))
    options = ProfileOptions(runtimes="executorch-xnnpack", memory=False, **FAST)
    (row,) = profile([out / "model.pte"], options).rows
    lim = row.limit
    assert lim["floor_ms"] > 0 and lim["flops_per_sample"] > 0  # FLOPs from model.onnx
    assert lim["dispatch_share"] + lim["arithmetic_share"] == pytest.approx(1.0)
    (out / "model.floor.pte").unlink()
    (row,) = profile([out / "model.pte"], options).rows
    assert row.limit is None and row.latency["p50_ms"] > 0


def test_self_comparison_ratio_spread_includes_one(models: Path):
    model = models / "model.onnx"
    report = profile([model, model], ProfileOptions(warmup=20, iters=400, memory=False))
    (comparison,) = report.comparisons
    assert comparison["rounds"] == 100
    assert comparison["p10"] <= 1.0 <= comparison["p90"], comparison
    assert len(report.rows) == 2 and report.rows[0].latency["count"] == 400


def test_per_op_names_gemm_and_the_horner_mul_add(cli_run, models: Path, tmp_path: Path):
    out = tmp_path / "r.json"
    result = cli_run(
        "profile",
        "--runtime",
        "cpu",
        models / "model.onnx",
        models / "model.int8.onnx",
        "--per-op",
        "--no-memory",
        "--warmup",
        5,
        "--iters",
        50,
        "--json",
        out,
    )
    assert result.exit_code == 0, result.output
    assert "horner" in result.output and "Gemm" in result.output
    for group in ("horner", "linear", "quantize", "other"):  # the legend says what each counts
        assert f"{group}: " in result.output, group
    fp32, int8 = json.loads(out.read_text())["results"]
    ops = {op["op_type"] for op in fp32["ops"]["top"]}
    assert {"Gemm", "Mul", "Add"} <= ops
    for row in (fp32, int8):
        share = row["ops"]["share"]
        assert share["horner"] > 0 and share["linear"] > 0
        assert sum(share.values()) == pytest.approx(1.0)
    int8_ops = {op["op_type"] for op in int8["ops"]["top"]}
    assert int8_ops & {"MatMulInteger", "DynamicQuantizeMatMul", "MatMulIntegerToFloat"}
    assert fp32["ops"]["share"]["quantize"] == 0  # a float model converts nothing to int8


def test_profile_runs_where_torch_cannot_be_imported(models: Path, tmp_path: Path):
    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "torch.py").write_text('raise ImportError("torch is blocked in this test")\n')
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(shim), str(REPO)])}
    out = tmp_path / "r.json"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "cr_edge.cli",
            "profile",
            str(models / "model.onnx"),
            "--runtime",
            "cpu,ort-mobile",
            "--per-op",
            "--warmup",
            "5",
            "--iters",
            "50",
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    rows = json.loads(out.read_text())["results"]
    assert [r["runtime"] for r in rows] == ["cpu", "ort-mobile"]
    assert all("error" not in r["memory"] and "error" not in r["ops"] for r in rows)


def test_threads_seconds_and_plot(cli_run, models: Path, tmp_path: Path):
    plot, out = tmp_path / "lat.png", tmp_path / "r.json"
    result = cli_run(
        "profile",
        "--runtime",
        "cpu",
        models / "model.onnx",
        "--threads",
        "1,2",
        "--seconds",
        0.2,
        "--no-memory",
        "--warmup",
        5,
        "--plot",
        plot,
        "--json",
        out,
    )
    assert result.exit_code == 0, result.output
    rows = json.loads(out.read_text())["results"]
    assert [r["threads"] for r in rows] == [1, 2]
    assert all(r["latency"]["count"] > 0 and r["memory"] is None for r in rows)
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_runtime_all_skips_what_is_missing_here_with_its_reason(
    cli_run, models: Path, tmp_path: Path
):
    out = tmp_path / "r.json"
    result = cli_run(
        "profile",
        models / "model.onnx",
        "--runtime",
        "all",
        "--no-memory",
        "--warmup",
        2,
        "--iters",
        20,
        "--json",
        out,
    )
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert {"cpu", "ort-mobile"} <= {r["runtime"] for r in report["results"]}
    skipped = {s["runtime"]: s["reason"] for s in report["skipped"]}
    assert "NnapiExecutionProvider" in skipped["nnapi"]
    assert "model.pte" in skipped["executorch-xnnpack"]
    assert "skipped nnapi" in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["missing.onnx"], "no such file"),
        (["garbage.onnx"], "not a valid ONNX model"),
        (["notes.txt"], "unknown artifact type"),
        (["model.onnx", "--runtime", "tpu"], "unknown runtime 'tpu'"),
        (["model.onnx", "--runtime", "nnapi"], "runtime nnapi: onnxruntime"),
        (["fixed.onnx", "--batch", "8"], "fixed batch of 1; --batch 8 cannot run"),
        (["fixed.onnx", "--runtime", "ort-mobile"], "no fixed.ort beside"),
        (["model.onnx", "--batch", "0"], "'--batch': '0'"),
        (["model.onnx", "--batch", "one"], "'--batch': 'one'"),
        (["model.onnx", "--threads", "0"], "'--threads': '0'"),
        (["model.onnx", "--iters", "5", "--seconds", "1"], "--iters or --seconds"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(cli_run, models: Path, args: list[str], message: str):
    (models / "garbage.onnx").write_bytes(b"\x00not a model\xff" * 8)
    (models / "notes.txt").write_text("hello\n")
    given = [str(models / a) if a.endswith((".onnx", ".txt")) else a for a in args]
    result = (
        cli_run("profile", "--runtime", "cpu", *given, "--no-memory", "--iters", 5)
        if "--seconds" not in args
        else cli_run("profile", *given)
    )
    assert result.exit_code == 2, result.output
    assert message in result.stderr and "Traceback" not in result.output
    assert len(result.stderr.strip().splitlines()) == 1


def test_plot_without_matplotlib_fails_before_measuring(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(InputError, match="pip install 'cr-edge\\[plot\\]'"):
        profile_view.require_matplotlib()


def test_per_op_summary_drops_first_runs_and_groups_shares():
    def event(node: str, op: str, dur: float) -> dict:
        args = {"op_name": op, "provider": "CPUExecutionProvider"}
        return {"cat": "Node", "name": f"{node}_kernel_time", "dur": dur, "args": args}

    events = [event("g", "Gemm", 500), event("m", "Mul", 500), event("r", "Reshape", 500)]
    for _ in range(10):
        events += [event("g", "Gemm", 6), event("m", "Mul", 3), event("r", "Reshape", 1)]
    events.append({"cat": "Session", "name": "model_run", "dur": 99})
    ops = summarize(events, top=2)
    assert ops["runs"] == 10 and ops["nodes"] == 3
    assert [(o["node"], o["typical_us"]) for o in ops["top"]] == [("g", 6.0), ("m", 3.0)]
    assert ops["share"] == pytest.approx(
        {"linear": 0.6, "horner": 0.3, "quantize": 0.0, "other": 0.1}
    )


def test_quantize_and_dequantize_are_a_share_of_their_own():
    """A QDQ int8 model: converting to and from int8 is neither the layer nor the polynomial."""

    def event(node: str, op: str, dur: float) -> dict:
        return {"cat": "Node", "name": f"{node}_kernel_time", "dur": dur, "args": {"op_name": op}}

    nodes = [
        ("x_QuantizeLinear", "QuantizeLinear", 2),
        ("x_DequantizeLinear", "DequantizeLinear", 2),
        ("w_DequantizeLinear", "DequantizeLinear", 1),
        ("node_linear", "Gemm", 4),
        ("node_mul_3", "Mul", 1),
    ]
    events = [event(n, op, d) for _ in range(3) for n, op, d in nodes]
    share = summarize(events, top=3)["share"]
    assert share == pytest.approx({"linear": 0.4, "horner": 0.1, "quantize": 0.5, "other": 0.0})


def test_a_quantized_layers_scale_mul_and_bias_add_count_as_linear_not_horner():
    def event(node: str, op: str) -> dict:
        return {"cat": "Node", "name": f"{node}_kernel_time", "dur": 1, "args": {"op_name": op}}

    nodes = [
        ("view_QuantizeLinear", "DynamicQuantizeLinear"),
        ("node_linear_MatMul_quant", "MatMulInteger"),
        ("linear_MatMul_output_quantized_cast", "Cast"),
        ("node_linear_MatMul_quant_output_scale_mul", "Mul"),
        ("node_linear_Add", "Add"),
        ("node_maximum", "Max"),
        ("node_mul_14", "Mul"),
        ("node_add_19", "Add"),
    ]
    events = [event(n, op) for _ in range(3) for n, op in nodes]
    assert summarize(events, top=3)["share"] == pytest.approx(
        {"linear": 4 / 8, "horner": 3 / 8, "quantize": 1 / 8, "other": 0.0}
    )


def test_latency_and_ratio_statistics():
    stats = latency_stats([1_000, 2_000, 3_000, 4_000], batch=8)
    assert stats["min_ms"] == 0.001 and stats["max_ms"] == 0.004
    assert stats["p50_ms"] == pytest.approx(0.0025)
    assert stats["throughput"] == pytest.approx(8 / 2.5e-6)
    ratio = ratio_stats([100.0] * 10, [float(v) for v in range(95, 105)])
    assert ratio["p10"] < 1.0 < ratio["p90"] and ratio["rounds"] == 10


def test_isa_flags_from_arm_and_x86_cpuinfo(tmp_path: Path):
    arm = tmp_path / "arm"
    arm.write_text("processor\t: 0\nFeatures\t: fp asimd evtstrm aes asimddp i8mm\n\n")
    x86 = tmp_path / "x86"
    x86.write_text("processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: sse4_2 avx avx2 fma\n")
    assert _isa(_cpuinfo(arm)) == ["dotprod", "i8mm", "neon"]
    assert _isa(_cpuinfo(x86)) == ["avx", "avx2", "fma", "sse4.2"]


def test_planned_sizes_are_an_upper_bound_exact_ort_shapes_are_not(models: Path):
    class Planned(Session):  # as ExecuTorch reports a dynamic batch: its planned maximum
        def __init__(self) -> None:
            self.inputs = [TensorSpec("x", (256, 8), np.dtype(np.float32))]
            self.outputs, self.metadata = [], {}

        def run(self, feeds):
            return []

    assert make_feeds(Planned(), 64, Path("m.pte"))["x"].shape == (64, 8)
    with pytest.raises(InputError, match="memory planned for a batch of 256; --batch 300"):
        make_feeds(Planned(), 300, Path("m.pte"))
    fixed = get_runtime("cpu").load(check_artifact(models / "fixed.onnx"))
    assert make_feeds(fixed, 1, models / "fixed.onnx")["x"].shape == (1, 1, 8, 8)
    with pytest.raises(InputError, match="a fixed batch of 1; --batch 2"):
        make_feeds(fixed, 2, models / "fixed.onnx")


def test_executorch_takes_a_thread_count_and_tiny_programs_default_to_one():
    """XNNPACK's pool is ExecuTorch's one global pool: ``--threads`` sets it, else size does."""
    from cr_edge.profile.workload import with_threads
    from cr_edge.runtimes.executorch import SINGLE_THREAD_BELOW_BYTES, ExecuTorchRuntime

    runtime = get_runtime("executorch-xnnpack")
    assert isinstance(runtime, ExecuTorchRuntime) and runtime.threads is None
    assert with_threads(runtime, 2).threads == 2
    assert SINGLE_THREAD_BELOW_BYTES >= 1_000_000  # a CR edge model (~10-100 KB) gets one thread
