"""Import onnxruntime's Python tooling (``onnxruntime.tools``) without importing torch.

``onnxruntime/tools/__init__.py`` imports torch whenever ``find_spec("torch")`` finds
it, for a PyTorch export helper cr-edge never uses. That costs seconds where torch
is installed, fails where torch is installed but broken, and breaks the promise that
validate and profile run on numpy and onnxruntime alone. While the package
initialises, torch is hidden from ``find_spec`` (a ``None`` entry in ``sys.modules``
makes it return None); the submodules themselves do not need torch. The one effect:
``onnxruntime.tools.infer_input_info`` is then not bound in this process.

Run as ``python -m cr_edge.runtimes.ort_tools TOOL ARGS...`` it runs that tool's own
command line the same way (``export``'s ORT converter child starts a second faster so).
"""

from __future__ import annotations

import importlib
import runpy
import sys
from types import ModuleType

PACKAGE = "onnxruntime.tools"


def ort_tool(name: str) -> ModuleType:
    """``onnxruntime.tools.<name>``, imported without pulling in torch."""
    _import_package()
    return importlib.import_module(f"{PACKAGE}.{name}")


def _import_package() -> None:
    if PACKAGE not in sys.modules and "torch" not in sys.modules:
        sys.modules["torch"] = None  # type: ignore[assignment]
        try:
            importlib.import_module(PACKAGE)
        finally:
            del sys.modules["torch"]


if __name__ == "__main__":
    _import_package()
    tool, sys.argv = sys.argv[1], sys.argv[1:]
    runpy.run_module(f"{PACKAGE}.{tool}", run_name="__main__", alter_sys=True)
