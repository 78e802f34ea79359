"""Small real artifacts for the runtime and validate tests, built once per test session.

The artifacts follow the export contract without using the exporter (which is built
elsewhere at the same time): a tiny MLP ``y = Linear2(p(Linear1(x)))`` whose cubic,
per-channel polynomial ``p`` is written in Horner form as plain Mul/Add, exported by
``torch.onnx.export(dynamo=True)`` at opset 17 with a dynamic batch axis; its JVP
companion (analytic ``J·v = W2 (p'(z) * (W1 v))``); an oracle ``model.ref.npz`` from
torch autograd (``torch.func.jvp``); and ``.ort`` versions made by onnxruntime's own
converter. Corruption helpers change a built model the way an exporter bug would.
"""

from __future__ import annotations

import contextlib
import io
import shutil
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from cr_edge.export.mobile import convert_to_ort

IN, HIDDEN, OUT, N_SAMPLES = 8, 16, 4, 64
COEFFS = (0.1, 0.5, 0.3, -0.05)  # a0..a3: a GELU-like cubic near the origin
_CACHE: dict[str, Path] = {}


def build_model_dir(root: Path) -> Path:
    """Export model.onnx, model.jvp.onnx, model.ref.npz, model.ort, model.jvp.ort under ``root``.

    Cached per process so that every test module shares one export (about 8 s).
    """
    if "model" in _CACHE:
        return _CACHE["model"]
    import torch

    folder = root / "model"
    folder.mkdir(parents=True, exist_ok=True)
    net, jvp_net = _nets(torch)
    x = torch.randn(N_SAMPLES, IN, generator=torch.Generator().manual_seed(1))
    v = torch.randn(N_SAMPLES, IN, generator=torch.Generator().manual_seed(2))
    batch = torch.export.Dim("batch")
    _export(torch, net, (x,), {"x": {0: batch}}, ["x"], ["y"], folder / "model.onnx")
    _export(
        torch,
        jvp_net,
        (x, v),
        {"x": {0: batch}, "v": {0: batch}},
        ["x", "v"],
        ["y", "jvp"],
        folder / "model.jvp.onnx",
    )
    with torch.no_grad():
        y, jvp = torch.func.jvp(net, (x,), (v,))
    labels = y.argmax(dim=1)
    np.savez(
        folder / "model.ref.npz",
        x=x.numpy(),
        y=y.numpy(),
        v=v.numpy(),
        jvp=jvp.numpy(),
        labels=labels.numpy().astype(np.int64),
    )
    convert_to_ort(folder / "model.onnx", folder / "model.jvp.onnx")  # one converter run
    _CACHE["model"] = folder
    return folder


def build_pte(folder: Path) -> Path:
    """Lower the same net to an ExecuTorch program with the XNNPACK delegate (needs executorch)."""
    import torch
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    net, _ = _nets(torch)
    x = torch.randn(N_SAMPLES, IN)
    program = torch.export.export(
        net, (x,), dynamic_shapes={"x": {0: torch.export.Dim("batch", max=256)}}
    )
    lowered = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()])
    path = folder / "model.pte"
    path.write_bytes(lowered.to_executorch().buffer)
    return path


def to_ort(onnx_path: Path) -> Path:
    """Convert with onnxruntime's converter (Fixed style), as ``export --format ort`` does."""
    return convert_to_ort(onnx_path)["ort"]


def copy_model(
    src: Path, dst: Path, names: tuple[str, ...] = ("model.onnx", "model.ref.npz")
) -> Path:
    """Copy some files of a model folder into a new folder (which is returned)."""
    dst.mkdir(parents=True, exist_ok=True)
    for name in names:
        shutil.copy(src / name, dst / name)
    return dst


def scale_coefficient(path: Path, factor: float = 1.01) -> str:
    """Multiply the linear Horner coefficient (a1) initializer by ``factor``; return its name."""
    model = onnx.load(path)
    name = _coefficient_name(model, COEFFS[1])
    for init in model.graph.initializer:
        if init.name == name:
            init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * factor, name))
    onnx.save(model, path)
    return name


def rewire_horner_mul(path: Path) -> str:
    """Make the second Horner Mul square its running value instead of multiplying by ``z``."""
    model = onnx.load(path)
    muls = [n for n in model.graph.node if n.op_type == "Mul"]
    node = muls[1]  # (a3*z + a2) * z  ->  (a3*z + a2) * (a3*z + a2)
    running = next(i for i in node.input if not i.startswith(("linear", "gemm")))
    z = next(i for i in node.input if i != running)
    node.input[list(node.input).index(z)] = running
    onnx.save(model, path)
    return node.name


def _coefficient_name(model: onnx.ModelProto, base: float) -> str:
    for init in model.graph.initializer:
        arr = numpy_helper.to_array(init)
        if arr.shape == (HIDDEN,) and abs(float(arr.mean()) - base) < 0.03:
            return init.name
    raise LookupError(f"no coefficient initializer near {base}")


def _nets(torch):
    from torch import nn

    class Net(nn.Module):
        """Linear -> cubic Horner polynomial (per channel) -> Linear."""

        def __init__(self) -> None:
            super().__init__()
            gen = torch.Generator().manual_seed(0)
            self.l1 = nn.Linear(IN, HIDDEN)
            self.l2 = nn.Linear(HIDDEN, OUT)
            for p in self.parameters():
                p.data = torch.randn(p.shape, generator=gen) * 0.4
            base = torch.tensor(COEFFS).unsqueeze(1)
            self.a = nn.Parameter(base + 0.02 * torch.randn(4, HIDDEN, generator=gen))

        def forward(self, x):
            z = self.l1(x)
            a = self.a
            return self.l2(((a[3] * z + a[2]) * z + a[1]) * z + a[0])

    class JvpNet(nn.Module):
        """(y, J(x)·v) with p'(z) by Horner on k*a_k, as the derivative companion computes it."""

        def __init__(self, net: Net) -> None:
            super().__init__()
            self.net = net

        def forward(self, x, v):
            n = self.net
            z = n.l1(x)
            a = n.a
            dz = v @ n.l1.weight.T
            dp = (3 * a[3] * z + 2 * a[2]) * z + a[1]
            return n(x), (dp * dz) @ n.l2.weight.T

    net = Net().eval()
    return net, JvpNet(net).eval()


def _export(torch, module, args, dynamic_shapes, input_names, output_names, path: Path) -> None:
    with contextlib.redirect_stdout(io.StringIO()):
        program = torch.onnx.export(
            module,
            args,
            dynamo=True,
            opset_version=17,
            dynamic_shapes=dynamic_shapes,
            input_names=input_names,
            output_names=output_names,
        )
    program.save(str(path))
