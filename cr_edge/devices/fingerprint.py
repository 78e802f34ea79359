"""What a device is: run ON the device, by its own Python, with the standard library only.

The host sends this file's text to the device's ``python3`` (``device check``, and
every ``--on`` run through ``cr_edge.devices.agent``), so it imports nothing from
cr-edge and nothing outside the standard library; onnxruntime is asked for only if
it is installed. It runs on Python 3.8 and later (no newer syntax).

The ISA features are the ones that change which kernels onnxruntime runs: on ARM64
``asimd`` (NEON), ``asimddp`` (SDOT, ARMv8.2 dotprod), ``i8mm`` (SMMLA), ``fphp`` and
``asimdhp`` (fp16 arithmetic), ``sve``; on x86 AVX2/AVX-512/VNNI. On ARM64 they come
from the kernel's HWCAP words in ``/proc/self/auxv``, which qemu's user mode fills in
for the CPU it emulates, where ``/proc/cpuinfo`` may describe the host instead; the
``Features`` line of ``/proc/cpuinfo`` is used when the auxiliary vector is unreadable.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import struct
import sys

AT_HWCAP, AT_HWCAP2 = 16, 26
# arch/arm64/include/uapi/asm/hwcap.h: the bits that matter to onnxruntime's kernels
ARM64_HWCAP = {1: "asimd", 9: "fphp", 10: "asimdhp", 20: "asimddp", 22: "sve", 23: "asimdfhm"}
ARM64_HWCAP2 = {1: "sve2", 13: "i8mm", 14: "bf16"}
ARM_FEATURES = ("asimd", "fphp", "asimdhp", "asimddp", "asimdfhm", "i8mm", "bf16", "sve", "sve2")
X86_FLAGS = (
    "sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw",
    "avx512_vnni", "avx512_bf16", "avx_vnni", "amx_tile",
)  # fmt: skip
# MIDR part numbers of Arm's own cores (implementer 0x41), for a CPU model name
ARM_PARTS = {
    0xD03: "Cortex-A53", 0xD04: "Cortex-A35", 0xD05: "Cortex-A55", 0xD07: "Cortex-A57",
    0xD08: "Cortex-A72", 0xD09: "Cortex-A73", 0xD0A: "Cortex-A75", 0xD0B: "Cortex-A76",
    0xD0C: "Neoverse-N1", 0xD0D: "Cortex-A77", 0xD40: "Neoverse-V1", 0xD41: "Cortex-A78",
    0xD44: "Cortex-X1", 0xD46: "Cortex-A510", 0xD47: "Cortex-A710", 0xD48: "Cortex-X2",
    0xD49: "Neoverse-N2", 0xD4D: "Cortex-A715", 0xD4F: "Neoverse-V2",
}  # fmt: skip


def fingerprint(workdir: str | None = None, runtime: bool = True) -> dict:
    """Arch, CPU model, ISA features, OS, Python, onnxruntime and the workdir's free disk.

    ``runtime``: ask onnxruntime for its providers (an import: slow under emulation).
    """
    arch = platform.machine().lower()
    blocks = _cpuinfo()
    isa, source = _isa(arch, blocks)
    info = {
        "arch": arch,
        "cpu": _cpu_model(arch, blocks),
        "isa": isa,
        "isa_source": source,
        "cores": os.cpu_count(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "python_path": sys.executable,
        "libc": " ".join(platform.libc_ver()).strip() or None,
    }
    info.update(_packages(runtime))
    if workdir:
        try:
            info["free_bytes"] = shutil.disk_usage(workdir).free
        except OSError:
            info["free_bytes"] = None
    return info


def _cpuinfo() -> list:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            text = f.read(1 << 20)
    except OSError:
        return []
    blocks = [{}]
    for line in text.splitlines():
        if not line.strip():
            blocks.append({})
            continue
        key, _, value = line.partition(":")
        blocks[-1][key.strip().lower()] = value.strip()
    return [b for b in blocks if b]


def _isa(arch: str, blocks: list) -> tuple:
    if arch in ("aarch64", "arm64"):
        words = _auxv()
        if AT_HWCAP in words:
            hw, hw2 = words[AT_HWCAP], words.get(AT_HWCAP2, 0)
            found = {n for bit, n in ARM64_HWCAP.items() if hw >> bit & 1}
            found |= {n for bit, n in ARM64_HWCAP2.items() if hw2 >> bit & 1}
            return [n for n in ARM_FEATURES if n in found], "hwcap"
        flags = set(blocks[0].get("features", "").split()) if blocks else set()
        return [n for n in ARM_FEATURES if n in flags], "cpuinfo"
    flags = set(blocks[0].get("flags", "").split()) if blocks else set()
    return [n for n in X86_FLAGS if n in flags], "cpuinfo"


def _auxv() -> dict:
    """The auxiliary vector's entries, by type; empty where it cannot be read."""
    try:
        with open("/proc/self/auxv", "rb") as f:
            data = f.read(1 << 16)
    except OSError:
        return {}
    size = struct.calcsize("@L")
    words = {}
    for i in range(0, len(data) - 2 * size + 1, 2 * size):
        kind, value = struct.unpack_from("@LL", data, i)
        if kind == 0:
            break
        words[kind] = value
    return words


def _cpu_model(arch: str, blocks: list) -> str:
    for block in blocks:
        for key in ("model name", "hardware", "cpu model"):
            if block.get(key):
                return block[key]
    if blocks and arch in ("aarch64", "arm64"):
        b = blocks[0]
        try:
            implementer, part = int(b["cpu implementer"], 16), int(b["cpu part"], 16)
        except (KeyError, ValueError):
            return "unknown"
        if implementer == 0x41 and part in ARM_PARTS:
            return ARM_PARTS[part]
        return f"implementer {implementer:#x} part {part:#x}"
    return "unknown"


def _packages(runtime: bool) -> dict:
    """Versions of the packages cr-edge runs on, and onnxruntime's providers if asked."""
    out = {"onnxruntime": None, "providers": None, "numpy": None, "cr_edge": None}
    try:
        from importlib import metadata
    except ImportError:  # Python < 3.8
        return out
    for dist, key in (("onnxruntime", "onnxruntime"), ("numpy", "numpy"), ("cr-edge", "cr_edge")):
        try:
            out[key] = metadata.version(dist)
        except Exception:  # PackageNotFoundError, or a broken install's metadata
            out[key] = None
    if out["cr_edge"] is None:
        out["cr_edge"] = _source_version("cr_edge")  # copied in without metadata (emulated root)
    if runtime and out["onnxruntime"]:
        try:
            import onnxruntime

            out["providers"] = list(onnxruntime.get_available_providers())
        except Exception as e:  # an install that cannot import is what check must show
            out["providers"] = None
            out["onnxruntime_error"] = (str(e).splitlines() or [type(e).__name__])[0][:200]
    return out


def _source_version(module: str) -> str | None:
    """``__version__`` read from a package's ``__init__.py`` without importing it."""
    try:
        import importlib.util

        spec = importlib.util.find_spec(module)
        if spec is None or not spec.origin:
            return None
        with open(spec.origin, encoding="utf-8") as f:
            for line in f:
                if line.startswith("__version__"):
                    return line.split("=", 1)[1].strip().strip("\"'")
    except (ImportError, OSError, ValueError):
        return None
    return None


if __name__ == "__main__":
    print(json.dumps(fingerprint(sys.argv[1] if len(sys.argv) > 1 else None)))
