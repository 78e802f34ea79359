"""What machine a profile was measured on, so that two reports can be compared.

Read from ``/proc/cpuinfo`` (Linux, Android/Termux, Raspberry Pi, Jetson) without
running any tool; elsewhere ``platform`` fills in what it can. Only the ISA flags
that change how onnxruntime's kernels run are listed: AVX2/AVX-512/VNNI on x86
(MLAS picks its GEMM by them), NEON/dotprod/i8mm/fp16 on Arm (the int8 kernels
need dotprod or i8mm to be fast).
"""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort

# /proc/cpuinfo flag -> the name reports use. x86 lists "flags", Arm lists "Features".
ISA_FLAGS = {
    "sse4_2": "sse4.2",
    "avx": "avx",
    "avx2": "avx2",
    "fma": "fma",
    "f16c": "f16c",
    "avx512f": "avx512f",
    "avx512bw": "avx512bw",
    "avx512_vnni": "avx512-vnni",
    "avx512_bf16": "avx512-bf16",
    "avx_vnni": "avx-vnni",
    "amx_tile": "amx",
    "neon": "neon",  # 32-bit Arm
    "asimd": "neon",  # AArch64 spells NEON "asimd"
    "asimddp": "dotprod",
    "i8mm": "i8mm",
    "asimdhp": "fp16",
    "sve": "sve",
    "bf16": "bf16",
}


def describe_device(cpuinfo: Path = Path("/proc/cpuinfo")) -> dict:
    """CPU model, core counts, ISA flags, OS, Python and onnxruntime with its EPs."""
    fields = _cpuinfo(cpuinfo)
    return {
        "cpu": _cpu_model(fields),
        "machine": platform.machine(),
        "logical_cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "physical_cores": _physical_cores(fields),
        "isa": _isa(fields),
        "os": platform.platform(),
        "python": sys.version.split()[0],
        "numpy": np.__version__,
        "onnxruntime": ort.__version__,
        "providers": ort.get_available_providers(),
    }


def _cpuinfo(path: Path) -> list[dict[str, str]]:
    """One dict per processor block; empty when there is no /proc/cpuinfo (macOS, Windows)."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return []
    blocks: list[dict[str, str]] = [{}]
    for line in text.splitlines():
        if not line.strip():
            blocks.append({})
            continue
        key, _, value = line.partition(":")
        blocks[-1][key.strip().lower()] = value.strip()
    return [b for b in blocks if b]


def _cpu_model(fields: list[dict[str, str]]) -> str:
    for block in fields:
        for key in ("model name", "hardware", "cpu model", "processor"):
            # Arm lists "processor : 0"; a bare number is an index, not a model.
            if block.get(key) and not block[key].isdigit():
                return block[key]
    board = Path("/proc/device-tree/model")  # Raspberry Pi, Jetson
    if board.is_file():
        return board.read_text(errors="replace").strip("\x00\n ")
    return platform.processor() or platform.machine()


def _physical_cores(fields: list[dict[str, str]]) -> int | None:
    cores = {(b.get("physical id"), b.get("core id")) for b in fields if "core id" in b}
    return len(cores) or None


def _isa(fields: list[dict[str, str]]) -> list[str]:
    raw: set[str] = set()
    for block in fields:
        raw.update(block.get("flags", "").split())
        raw.update(block.get("features", "").split())
    found = {ISA_FLAGS[f] for f in raw if f in ISA_FLAGS}
    if not fields and platform.machine() in ("arm64", "aarch64"):
        found.add("neon")  # AArch64 makes NEON mandatory
    return sorted(found)
