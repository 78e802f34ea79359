"""The ``cr-edge quantize`` table: every policy tried, its figures, and the verdict."""

from __future__ import annotations

from rich import box
from rich.console import Console
from rich.table import Table

from cr_edge.quantize.quantizer import QuantizeResult, Tried

_console = Console()
# The table is ~150 columns; narrower (non-tty, CI) consoles would elide its figures.
_stdout = Console(width=max(_console.width, 160))


def _num(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _device_cell(t: Tried, name: str) -> str:
    """pass/FAIL with the device's error over the tolerance; "-" where it was not run
    (failed here, not a candidate auto could keep, or a better one already passed)."""
    verdict = t.devices.get(name)
    return "-" if verdict is None else verdict.cell()


def _row(t: Tried, fp32_bytes: int, chosen: bool, devices: list[str] = ()) -> list[str]:
    p = t.parity
    return [
        ("*" if chosen else "") + t.policy.label,
        f"{t.bytes / fp32_bytes:.2f}x",
        _num(t.accuracy, ".4f"),
        "-" if p is None else f"{p.max_abs_err:.2g}/{p.atol:.2g}",
        "-" if p is None or p.argmax_agree is None else f"{p.argmax_agree:.3f}",
        "-" if p is None else _num(p.jvp_min_cos, ".4f"),
        "-" if p is None or p.kinks is None else str(p.kinks),
        _num(t.secant_cos, ".4f"),
        *(f"{v['ratio']:.2f}x" for v in t.latency.values()),
        ",".join(w.name.replace("onnxruntime", "ort") for w in t.ways if not w.parity.ok) or "-",
        *(_device_cell(t, name) for name in devices),
        "pass" if t.passed else "FAIL",
    ]


def print_quantize(result: QuantizeResult) -> None:
    """What was tried and why the kept model was kept, then the files written.

    Latency is the median per-round ratio to fp32 (interleaved runs, one thread);
    quantize.json has the p10-p90 spread and every figure unrounded. "failed ways"
    names the parity checks that failed: ort (this CPU), ort b1 (batch 1), exact
    (integer maths), avx2 (the u8s8 kernel of x86 without VNNI), no-dotprod (MatMulNBits
    in float, as ARM64 cores without dotprod run it), fp16 hw (fp16 accumulation), and
    avx2/arm64 unjudged (a kernel no way emulates, so the verdict cannot hold there).
    "kinks" counts the oracle samples left out of "jvp cos" and "secant cos" because they
    lie at a guard or ReLU kink of the candidate (``cr_edge.validate.kink_skips``):
    skipped, not passed.
    "@NAME" (``--certify-on``) is the device's verdict, with its error over the tolerance.
    """
    acc = "" if result.fp32_accuracy is None else f", fp32 accuracy {result.fp32_accuracy:.4f}"
    table = Table(
        title=f"quantize -> {result.out} (fp32 {result.fp32_bytes:,} B{acc})", box=box.SIMPLE_HEAD
    )
    batches = list(result.tried[0].latency)
    for name in (
        "policy",
        "size",
        "accuracy",
        "err/atol",
        "argmax",
        "jvp cos",
        "kinks",
        "secant cos",
        *(f"t b{b}" for b in batches),
        "failed ways",
        *(f"@{name}" for name in result.certified_on),
        "ok",
    ):
        table.add_column(name, justify="left" if name == "policy" else "right", no_wrap=True)
    for t in result.tried:
        table.add_row(*_row(t, result.fp32_bytes, t is result.chosen, result.certified_on))
    _stdout.print(table)
    if result.chosen is None:
        _stdout.print("[bold]kept fp32[/bold]: no quantized model written (see the reasons below)")
    for t in result.tried:
        _stdout.print(f"{t.policy.label}: {t.why}")
    for note in result.notes:
        _stdout.print(f"[dim]{note}[/dim]")
    for kind, path in result.files.items():
        _stdout.print(f"{kind}: {path}")
