"""The layering ARCHITECTURE.md fixes, read from the source: no import cycles (lazy
imports included), and the device-side packages never import torch."""

from __future__ import annotations

import ast
from pathlib import Path

import cr_edge

ROOT = Path(cr_edge.__file__).parent
TORCH_FREE = ("artifacts", "runtimes", "quantize", "validate", "profile", "devices")


def _module(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every module ``path`` imports, at any depth of the file (lazy imports count)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
    return found


def _graph() -> dict[str, set[str]]:
    files = {_module(p): p for p in ROOT.rglob("*.py") if p.name != "__main__.py"}
    # a package's __init__ re-exporting its modules is how a package is read, not a cycle
    return {
        name: {
            m for m in _imports(path) if m in files and m != name and not name.startswith(m + ".")
        }
        for name, path in files.items()
    }


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        state[node] = 2
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_cycle_finder_finds_a_cycle_it_is_given():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_no_module_imports_itself_back():
    cycle = _cycle(_graph())
    assert cycle is None, " -> ".join(cycle)


def test_device_side_packages_import_no_torch_at_module_level():
    offenders = []
    for package in TORCH_FREE:
        for path in (ROOT / package).rglob("*.py") if (ROOT / package).is_dir() else []:
            tree = ast.parse(path.read_text())
            for node in tree.body:  # module level only: ExecuTorch loads torch lazily
                names = (
                    [a.name for a in node.names]
                    if isinstance(node, ast.Import)
                    else [node.module or ""]
                    if isinstance(node, ast.ImportFrom)
                    else []
                )
                if any(n == "torch" or n.startswith("torch.") for n in names):
                    offenders.append(str(path.relative_to(ROOT)))
    assert not offenders, offenders


def test_no_stage_spells_a_metadata_key_outside_the_schema():
    """Every ``cr_edge.*`` metadata key lives in ``artifacts/metadata.py``."""
    import re

    key = re.compile(
        r"[\"']cr_edge\.(?!runtimes\.|profile\.|train\.|cli\b)[a-z_]+(\.[a-z_]+)?[\"']"
    )
    spelled = [
        f"{p.relative_to(ROOT)}: {m.group(0)}"
        for p in ROOT.rglob("*.py")
        if p.name != "metadata.py"
        for m in key.finditer(p.read_text())
    ]
    assert not spelled, spelled
