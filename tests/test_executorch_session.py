"""The ExecuTorch session's two call paths, on real programs with the XNNPACK delegate.

``run`` hands back fresh arrays; ``bound`` (what ``profile`` times) binds the inputs once,
as onnxruntime's IOBinding does, and leaves the outputs in the method's planned buffers.
Both must compute on the right inputs whether the program leaves its inputs to the
caller (cr-edge's export) or plans them into its arena (ExecuTorch's default lowering).
Outputs are checked against the PyTorch module at fp32 tolerances (atol 1e-5, rtol 1e-4).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cr_edge.runtimes.registry import get_runtime
from cr_edge.runtimes.safe_load import check_artifact

pytest.importorskip("executorch")
torch = pytest.importorskip("torch")

ATOL, RTOL = 1e-5, 1e-4
IN, OUT = 8, 4


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(IN, 16), torch.nn.Tanh(), torch.nn.Linear(16, OUT)
    ).eval()


@pytest.fixture(scope="module", params=["caller", "planned"])
def program(request, net, tmp_path_factory) -> tuple[str, Path]:
    """``model.pte`` from cr-edge's export (inputs unplanned) or ExecuTorch's defaults."""
    folder = tmp_path_factory.mktemp(f"pte-{request.param}")
    path = folder / "model.pte"
    example = torch.randn(4, IN)
    if request.param == "caller":
        from cr_edge.export.pte import export_pte

        export_pte(net, example, path, batch=4)
    else:
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import (
            XnnpackPartitioner,
        )
        from executorch.exir import to_edge_transform_and_lower

        exported = torch.export.export(net, (example,))
        lowered = to_edge_transform_and_lower(exported, partitioner=[XnnpackPartitioner()])
        path.write_bytes(lowered.to_executorch().buffer)
    return request.param, path


def _inputs_planned(path: Path) -> bool:
    from executorch.extension.pybindings import portable_lib

    program = portable_lib._load_program_from_buffer(path.read_bytes())
    return program.method_meta("forward").input_tensor_meta(0).is_memory_planned()


def _reference(net, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return net(torch.from_numpy(x)).numpy()


def _samples(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((4, IN)).astype(np.float32)


def test_export_leaves_the_inputs_to_the_caller(program) -> None:
    kind, path = program
    assert _inputs_planned(path) == (kind == "planned")


def test_run_returns_fresh_outputs(program, net) -> None:
    """The outputs are the caller's: a later call must not overwrite an earlier result."""
    _, path = program
    session = get_runtime("executorch-xnnpack").load(check_artifact(path))
    a, b = _samples(1), _samples(2)
    (ya,) = session.run({"x": a})
    (yb,) = session.run({"x": b})
    np.testing.assert_allclose(ya, _reference(net, a), atol=ATOL, rtol=RTOL)
    np.testing.assert_allclose(yb, _reference(net, b), atol=ATOL, rtol=RTOL)


def test_bound_call_runs_on_its_own_inputs_after_a_run(program, net) -> None:
    _, path = program
    session = get_runtime("executorch-xnnpack").load(check_artifact(path))
    a = _samples(3)
    fn, arg = session.bound({"x": a})
    fn(arg)
    session.run({"x": _samples(4)})  # binds other inputs (and frees them)
    fn(arg)
    (y,) = session._method.get_outputs(False)  # left in place, as IOBinding leaves them
    np.testing.assert_allclose(y.numpy(), _reference(net, a), atol=ATOL, rtol=RTOL)


def test_bound_inputs_are_the_callers_buffers(program, net) -> None:
    """As with IOBinding's ``bind_cpu_input``: new data written into the bound array is
    what the next call reads, with no copy per call. A planned input is copied in when it
    is bound, so there the next call still reads the data it was bound with."""
    kind, path = program
    session = get_runtime("executorch-xnnpack").load(check_artifact(path))
    buffer = _samples(5)
    fn, arg = session.bound({"x": buffer})
    fn(arg)
    buffer[...] = _samples(6)
    fn(arg)
    (y,) = session._method.get_outputs(False)
    seen = _samples(6) if kind == "caller" else _samples(5)
    np.testing.assert_allclose(y.numpy(), _reference(net, seen), atol=ATOL, rtol=RTOL)
