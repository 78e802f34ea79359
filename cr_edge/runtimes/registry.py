"""The runtimes by name, and the ``--runtime`` list parser.

Names are stable (they appear in reports and CI scripts); unknown names are bad
input listing the known ones, never a ``KeyError``.
"""

from __future__ import annotations

from cr_edge.errors import InputError
from cr_edge.runtimes.executorch import ExecuTorchRuntime
from cr_edge.runtimes.ort import ort_runtimes
from cr_edge.runtimes.runtime import Runtime

RUNTIMES: dict[str, Runtime] = {r.name: r for r in [*ort_runtimes(), ExecuTorchRuntime()]}
RUNTIME_NAMES = tuple(RUNTIMES)
ALL = "all"


def get_runtime(name: str) -> Runtime:
    """The runtime called ``name``; ``InputError`` listing the known names otherwise."""
    try:
        return RUNTIMES[name]
    except KeyError:
        raise InputError(
            f"unknown runtime {name!r}; choose from {', '.join(RUNTIME_NAMES)} or {ALL}"
        ) from None


def parse_runtimes(spec: str | list[str]) -> list[Runtime]:
    """``"all"``, ``"cpu,ort-mobile"`` or a list of names -> runtimes, in the order given."""
    names = spec.split(",") if isinstance(spec, str) else list(spec)
    names = [n.strip() for n in names if n.strip()]
    if not names:
        raise InputError(f"no runtime named; choose from {', '.join(RUNTIME_NAMES)} or {ALL}")
    if ALL in names:
        return list(RUNTIMES.values())
    return [get_runtime(n) for n in dict.fromkeys(names)]
