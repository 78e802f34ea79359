"""What the commands print on the terminal: rich tables of metrics, exports and runs."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

_stdout = Console()


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def print_metrics(title: str, metrics: dict) -> None:
    table = Table(title=title, show_header=True)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in metrics.items():
        table.add_row(key, _fmt(value))
    _stdout.print(table)


def print_export(result) -> None:
    """Files written, their sizes, and what the folds did to each polynomial."""
    table = Table(title=f"export -> {result.out}")
    table.add_column("artifact")
    table.add_column("file")
    table.add_column("bytes", justify="right")
    for kind, path in result.files.items():
        table.add_row(kind, path.name, f"{path.stat().st_size:,}")
    _stdout.print(table)
    if result.horner_nodes:
        _stdout.print(f"Horner Mul/Add nodes per polynomial: {result.horner_nodes}")
    for note in result.refusals:
        _stdout.print(f"[dim]kept: {note}[/dim]")
    ops = ", ".join(f"{k} {v}" for k, v in sorted(result.op_counts.items()))
    _stdout.print(f"model.onnx ops: {ops}")


def print_summary(summary: dict, out: Path) -> None:
    """The pipeline's closing table, then where it all is and the verdict in one line."""
    from cr_edge.pipeline import verdict

    table = Table(title=f"pipeline {summary['recipe']['name']}")
    table.add_column("what")
    table.add_column("value", justify="right")
    table.add_row("parameters", f"{summary['parameters']:,}")
    for name, value in summary["test_metrics"].items():
        table.add_row(f"test {name} fp32", f"{value:.4f}")
    quant = summary["quantized"]
    if quant and quant["policy"]:
        table.add_row(
            escape(f"test accuracy {quant['policy']} ({quant['label']})"),
            "-" if quant["accuracy"] is None else f"{quant['accuracy']:.4f}",
        )
    elif quant:
        table.add_row("quantized", "kept fp32 (no candidate qualified)")
    pte = summary.get("executorch_int8")
    if pte:
        kept = "kept" if pte["kept"] else "not kept (fails its int8 validation)"
        table.add_row(escape(f"ExecuTorch int8 {pte['file']}"), kept)
    for name, size in summary["files"].items():
        table.add_row(f"size {name}", f"{size:,} B")
    for artifact, per in summary["parity"].items():
        for runtime, status in per.items():
            table.add_row(escape(f"parity {artifact} [{runtime}]"), status)
    for key, us in summary["p50_latency_us"].items():
        table.add_row(escape(f"p50 {key}"), f"{us:.1f} µs")
    _stdout.print(table)
    if quant and "certified" in quant:  # on which devices auto's choice was certified, or why not
        from cr_edge.devices.certify import summary_lines

        for line in summary_lines(quant["certified"]):
            _stdout.print(escape(line[2:]))
    _stdout.print(escape(f"results: {out}"))
    _stdout.print(escape(verdict(summary)))
