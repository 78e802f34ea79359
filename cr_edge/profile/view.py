"""How a profile is shown: rich tables on stdout, a progress bar on stderr, a PNG plot.

matplotlib is an optional extra (``cr-edge[plot]``): ``require_matplotlib`` is
called before measuring, so a missing install fails in a second, not after minutes.
"""

from __future__ import annotations

import io
import sys
from pathlib import Path

from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from cr_edge.artifacts.atomic import write_bytes
from cr_edge.errors import InputError
from cr_edge.profile.perop import SHARES
from cr_edge.profile.profiler import ProfileReport, Row

# Piped or captured output is not wrapped at 80 columns: the tables are for reading later.
_stdout = Console(width=None if sys.stdout.isatty() else 160)


def print_report(report: ProfileReport) -> None:
    """The device line, the latency table, comparisons, per-op tables and skipped runtimes."""
    d = report.device
    _stdout.print(
        f"[bold]{d['cpu']}[/bold] · {d['usable_cores']}/{d['logical_cores']} cores · "
        f"{' '.join(d['isa']) or 'no listed ISA flags'} · onnxruntime {d['onnxruntime']} "
        f"({', '.join(p.removesuffix('ExecutionProvider') for p in d['providers'])})"
    )
    if report.rows:
        _stdout.print(_latency_table(report.rows))
        _stdout.print(_cost_table(report.rows))
        if any(r.limit for r in report.rows):
            _stdout.print(_limit_table(report.rows))
    if report.comparisons:
        _stdout.print(_comparison_table(report.comparisons))
    for row in report.rows:
        if row.ops:
            _stdout.print(_ops_table(row))
            if "share" in row.ops:
                _stdout.print(_shares(row.ops))
    methods = {r.memory["method"] for r in report.rows if r.memory and "method" in r.memory}
    for method in sorted(methods):
        _stdout.print(f"[dim]peak RSS: {method}[/dim]")
    for row in report.rows:
        if row.memory and "error" in row.memory:
            _stdout.print(f"[yellow]memory of {row.file} on {row.runtime}: {row.memory['error']}")
    for skip in report.skipped:
        _stdout.print(f"[yellow]skipped {skip['runtime']}: {skip['reason']}")


def _latency_table(rows: list[Row]) -> Table:
    table = _table("latency per run (timed around the session run only)")
    for name in ("model", "runtime", "batch", "thr", "min", "p50", "p90", "p99", "max", "spread"):
        table.add_column(name, justify="left" if name in ("model", "runtime") else "right")
    for r in rows:
        lat = r.latency
        table.add_row(
            *_setting(r),
            *(_ms(lat[k]) for k in ("min_ms", "p50_ms", "p90_ms", "p99_ms", "max_ms")),
            f"{lat['spread']:.0%}",
        )
    return table


def _cost_table(rows: list[Row]) -> Table:
    table = _table("throughput, size, start-up and peak RSS added (load / load+run)")
    for name in (
        "model",
        "runtime",
        "batch",
        "thr",
        "samples/s",
        "size",
        "load",
        "1st run",
        "+RSS",
    ):
        table.add_column(name, justify="left" if name in ("model", "runtime") else "right")
    for r in rows:
        table.add_row(
            *_setting(r),
            f"{r.latency['throughput']:,.0f}",
            _size(r.size_bytes),
            _ms(r.load_ms),
            _ms(r.first_ms),
            _memory(r.memory),
        )
    return table


def _limit_table(rows: list[Row]) -> Table:
    table = _table(
        "distance to the limit: the floor is an arithmetic-free graph with the same inputs "
        "and outputs, timed in the same rounds"
    )
    for name in ("model", "runtime", "batch", "thr", "FLOPs/sample", "GFLOP/s", "floor", "split"):
        table.add_column(name, justify="left" if name in ("model", "runtime", "split") else "right")
    for r in rows:
        if not r.limit:
            continue
        lim = r.limit
        flops, gflops = lim["flops_per_sample"], lim["gflops"]
        table.add_row(
            *_setting(r),
            "?" if flops is None else f"{flops:,}",
            "?" if gflops is None else f"{gflops:.2f}",
            _ms(lim["floor_ms"]),
            f"{lim['dispatch_share']:.0%} of this call is dispatch, "
            f"{lim['arithmetic_share']:.0%} arithmetic",
        )
    return table


def _setting(r: Row) -> tuple[str, str, str, str]:
    return Path(r.file).name, r.runtime, str(r.batch), str(r.threads or "-")


def _table(title: str) -> Table:
    return Table(title=title, box=box.SIMPLE_HEAD, pad_edge=False)


def _comparison_table(comparisons: list[dict]) -> Table:
    table = _table("interleaved A/B: latency ratio other / base per round (> 1: other is slower)")
    for name in ("runtime", "batch", "thr", "base", "other", "ratio", "p10-p90", "rounds"):
        table.add_column(name, justify="right" if name in ("ratio", "rounds") else "left")
    for c in comparisons:
        table.add_row(
            c["runtime"],
            str(c["batch"]),
            str(c["threads"] or "-"),
            Path(c["base"]).name,
            Path(c["other"]).name,
            f"{c['ratio']:.3f}",
            f"{c['p10']:.3f}-{c['p90']:.3f}",
            str(c["rounds"]),
        )
    return table


def _ops_table(row: Row) -> Table:
    ops = row.ops or {}
    title = f"per-op: {Path(row.file).name} on {row.runtime}, batch {row.batch}"
    table = _table(title)
    if "error" in ops:
        table.add_column("not available")
        table.add_row(ops["error"])
        return table
    for name in ("node", "op", "provider", "time", "share"):
        table.add_column(name, justify="right" if name in ("time", "share") else "left")
    for op in ops["top"]:
        table.add_row(
            op["node"],
            op["op_type"],
            op["provider"],
            f"{op['typical_us']:.1f}µs",
            f"{op['share']:.0%}",
        )
    return table


def _shares(ops: dict) -> str:
    """The group shares on one line, then a legend: what each share counts."""
    share = ops["share"]
    line = " · ".join(f"{group} {share.get(group, 0.0):.0%}" for group in SHARES)
    legend = "".join(f"\n  [dim]{group}: {escape(what)}[/dim]" for group, what in SHARES.items())
    return (
        f"{line}  [dim]({ops['runs']} profiled runs, 10%-trimmed mean; the profiler adds a "
        f"few µs per node)[/dim]{legend}\n"
    )


def require_matplotlib() -> None:
    """Fail fast, before any measuring, when ``--plot`` cannot be honoured."""
    try:
        import matplotlib  # noqa: F401
    except ImportError as e:
        raise InputError("--plot needs matplotlib: pip install 'cr-edge[plot]'") from e


def plot_latency(report: ProfileReport, path: Path) -> None:
    """Latency distribution per row as an empirical CDF (log time axis), written atomically."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on an edge box
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for r in report.rows:
        us = np.sort(np.asarray(r.samples_ns, dtype=np.float64) / 1e3)
        label = f"{Path(r.file).name} · {r.runtime} · b{r.batch} · t{r.threads or '-'}"
        ax.step(us, np.arange(1, us.size + 1) / us.size, where="post", label=label)
    ax.set_xscale("log")
    ax.set_xlabel("latency per run (µs)")
    ax.set_ylabel("fraction of runs ≤ latency")
    ax.set_title(f"cr-edge profile on {report.device['cpu']}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize="small")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    write_bytes(path, buf.getvalue())


def _ms(value: float) -> str:
    return f"{value * 1e3:.1f}µs" if value < 1 else f"{value:.2f}ms"


def _size(n: int) -> str:
    return f"{n / 1024:.1f} KiB" if n < 1024**2 else f"{n / 1024**2:.2f} MiB"


def _memory(memory: dict | None) -> str:
    if not memory:
        return "-"
    if "error" in memory:
        return "failed"
    return f"{memory['load_kb'] / 1024:.1f}/{memory['run_kb'] / 1024:.1f}MiB"
