"""How devices are shown: one line per device's fingerprint, a latency table per device.

A latency from an emulated device is printed (it shows the model ran), marked
"emulated: not a timing", and no ratio is shown beside it.
"""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from cr_edge.devices.commands import NOT_A_TIMING
from cr_edge.devices.remote import DeviceRun


def describe(fingerprint: dict) -> str:
    """One line: arch, CPU, ISA features, OS, Python, onnxruntime and its providers."""
    f = fingerprint
    providers = ", ".join(p.removesuffix("ExecutionProvider") for p in f.get("providers") or [])
    ort = f.get("onnxruntime") or "no onnxruntime"
    free = f.get("free_bytes")
    disk = f" · {free / 2**30:.1f} GiB free" if isinstance(free, (int, float)) else ""
    return (
        f"{f.get('arch')} · {f.get('cpu')} · {' '.join(f.get('isa') or []) or 'no listed ISA features'}"
        f" · {f.get('os')} · Python {f.get('python')} · onnxruntime {ort}"
        f"{f' ({providers})' if providers else ''}{disk}"
    )


def print_devices(devices: dict, console: Console) -> None:
    """The fingerprint line of each device a report ran on."""
    for name, entry in devices.items():
        mark = " (emulated)" if entry.get("emulated") else ""
        console.print(
            f"[bold]@{escape(name)}[/bold]{mark}: {escape(describe(entry['fingerprint']))}",
            highlight=False,
        )


def print_profiles(runs: list[DeviceRun], console: Console) -> None:
    """A latency table per device; an emulated device's rows say they are not timings."""
    for run in runs:
        emulated = run.emulated
        title = f"latency on @{run.name}" + (f" ({NOT_A_TIMING})" if emulated else "")
        table = Table(title=escape(title))
        for name in ("model", "runtime", "batch", "thr", "p50", "p90", "p99"):
            table.add_column(name, justify="left" if name in ("model", "runtime") else "right")
        for row in run.report.get("results", []):
            lat = row["latency"]
            cells = [_ms(lat[k]) for k in ("p50_ms", "p90_ms", "p99_ms")]
            if emulated:
                cells = [f"[dim]{c}[/dim]" for c in cells]
            table.add_row(
                escape(str(row["file"])),
                escape(str(row["runtime"])),
                str(row["batch"]),
                str(row["threads"] or "-"),
                *cells,
            )
        console.print(table)
        console.print(f"[bold]@{escape(run.name)}[/bold]: {escape(describe(run.fingerprint))}")
        if emulated:
            console.print(
                f"[yellow]@{escape(run.name)}: {NOT_A_TIMING}; no ratio reads it[/yellow]"
            )
        for comparison in run.report.get("comparisons", []):
            console.print(
                f"@{escape(run.name)} comparison: {escape(str(comparison))}", highlight=False
            )


def _ms(value: float) -> str:
    return f"{value * 1e3:.1f}µs" if value < 1 else f"{value:.2f}ms"
