"""ONNX Runtime runtimes: the CPU EP, the ORT-format mobile load, and the mobile EPs.

Each runtime is one execution provider with its own options, falling back to the
CPU EP for nodes it does not take (as on a phone). Sessions record which provider
took which node (``session.record_ep_graph_assignment_info``) so that coverage
reports the real assignment wherever the EP exists. The model format is set
explicitly rather than guessed from the file name, so an ONNX file named ``.ort``
is refused instead of half-parsed.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnxruntime as ort

from cr_edge.artifacts import metadata as schema
from cr_edge.errors import InputError
from cr_edge.runtimes.runtime import (
    AssignedNode,
    RunError,
    Runtime,
    Session,
    TensorSpec,
    Unavailable,
)
from cr_edge.runtimes.safe_load import Artifact, one_line

if TYPE_CHECKING:
    import onnx

CPU = "CPUExecutionProvider"
# A weight-only int8 file (``cr_edge.quant.dequantize_at_load``) is meant to run with this:
# onnxruntime then folds each weight's DequantizeLinear into a float initializer when the
# session loads (its constant folding skips DequantizeLinear otherwise), so the file holds
# int8 weights and a call costs what fp32's does, instead of dequantizing every weight again
# on every call. QDQ fusion is off with it, which is right for a file with no quantized
# activations.
DEQUANTIZE_AT_LOAD = {"session.disable_quant_qdq": "1"}
KERNEL_SUFFIX = "_kernel_time"  # profiler event name of a node: "<node>_kernel_time"
ORT_DTYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8,
    "tensor(bool)": np.bool_,
}


@dataclass(frozen=True)
class OrtRuntime(Runtime):
    """One ORT execution provider (plus CPU fallback) and the options it is created with."""

    name: str
    provider: str
    suffixes: tuple[str, ...] = (".onnx", ".ort")
    provider_options: dict[str, str] = field(default_factory=dict)
    session_config: dict[str, str] = field(default_factory=dict)
    intra_op_threads: int = 0  # 0: ORT's default
    mobile: bool = False  # load ORT-format bytes in place, as the ORT mobile package does

    def available(self) -> tuple[bool, str]:
        have = ort.get_available_providers()
        if self.provider in have:
            return True, ""
        short = ", ".join(p.removesuffix("ExecutionProvider") for p in have)
        return False, f"onnxruntime {ort.__version__} here has no {self.provider} (it has {short})"

    def load(self, artifact: Artifact) -> OrtSession:
        ok, why = self.available()
        if not ok:
            raise Unavailable(why)
        if artifact.kind not in ("onnx", "ort"):
            raise Unavailable(f"{self.name} runs .onnx/.ort, not {artifact.path.name}")
        return OrtSession(self.create_session(artifact, self.session_options(artifact)), artifact)

    def placement(
        self, artifact: Artifact, session: OrtSession, feeds: dict[str, np.ndarray]
    ) -> list[AssignedNode]:
        """Which provider runs each node: from the session, else from one profiled run.

        onnxruntime records no graph assignment for ORT-format models (the list comes
        back empty), but its profiler tags every executed kernel with its provider.
        A compiled EP partition shows there as one fused node.
        """
        recorded = session.assignment()
        if recorded:
            return recorded
        first = {k: v[: session.fixed_batch or 1] for k, v in feeds.items()}
        with tempfile.TemporaryDirectory() as tmp:
            options = self.session_options(artifact)
            options.enable_profiling = True
            options.profile_file_prefix = str(Path(tmp) / "placement")
            profiled = self.create_session(artifact, options)
            OrtSession(profiled, artifact).run_all(first)
            trace = Path(profiled.end_profiling())
            try:
                events = json.loads(trace.read_text(encoding="utf-8", errors="replace"))
            except ValueError as e:
                raise Unavailable(f"onnxruntime's profiler trace is unreadable ({e})") from e
        nodes = {}
        for e in events:
            name = str(e.get("name", ""))
            if e.get("cat") == "Node" and name.endswith(KERNEL_SUFFIX):
                args = e.get("args", {})
                name = name.removesuffix(KERNEL_SUFFIX)
                nodes[name] = AssignedNode(
                    args.get("provider", "?"), name, args.get("op_name", "?")
                )
        return list(nodes.values())

    def session_options(self, artifact: Artifact) -> ort.SessionOptions:
        """The options this runtime creates sessions with; callers may add to them (profiling)."""
        options = ort.SessionOptions()
        options.log_severity_level = 3  # errors only: warnings would interleave with the report
        if self.intra_op_threads:
            options.intra_op_num_threads = self.intra_op_threads
        config = {
            "session.record_ep_graph_assignment_info": "1",
            "session.load_model_format": "ORT" if artifact.kind == "ort" else "ONNX",
            **file_session_config(artifact.model, artifact.path),
            **self.session_config,
        }
        if self.mobile:
            config["session.use_ort_model_bytes_directly"] = "1"
        for key, value in config.items():
            options.add_session_config_entry(key, value)
        return options

    def create_session(
        self, artifact: Artifact, options: ort.SessionOptions
    ) -> ort.InferenceSession:
        """A raw ``InferenceSession`` with this runtime's providers; InputError if ORT refuses."""
        # ORT-format models load from the bytes that were checked (in place for mobile:
        # OrtSession keeps them alive); ONNX from the path, so that ORT resolves external
        # data next to the model.
        source = artifact.data if artifact.kind == "ort" else str(artifact.path)
        providers: list = [(self.provider, dict(self.provider_options))]
        if self.provider != CPU:
            providers.append(CPU)
        try:
            session = ort.InferenceSession(source, options, providers=providers, enable_fallback=0)
        # onnxruntime's errors (Fail, InvalidGraph, InvalidProtobuf, ...) derive from
        # Exception directly; any of them means this file cannot be loaded here.
        except Exception as e:
            raise InputError(f"{artifact.path}: {self.name} cannot load it ({one_line(e)})") from e
        if self.provider not in session.get_providers():
            raise Unavailable(f"{self.provider} did not register for {artifact.path.name}")
        return session


def file_session_config(model: onnx.ModelProto | None, source: object = "model") -> dict[str, str]:
    """The session config entries ``model``'s metadata asks for. Only this one flag, never
    entries copied from the file: a hostile file must not choose a session's options."""
    if model is None:  # an ORT-format file: its graph was fixed when it was converted
        return {}
    props = {p.key: p.value for p in model.metadata_props}
    return dict(DEQUANTIZE_AT_LOAD) if schema.read(props, str(source)).dequantize_at_load else {}


class OrtSession(Session):
    """An ``onnxruntime.InferenceSession`` behind the ``Session`` interface.

    ``artifact`` is the checked file it was loaded from; None for a model built in
    memory (``quantize``'s candidates), which never passed through a file.
    """

    def __init__(self, session: ort.InferenceSession, artifact: Artifact | None = None) -> None:
        self._session = session
        self._artifact = artifact  # ORT may read ORT-format bytes in place: keep them alive
        # The binding decodes names as UTF-8 and raises on anything else, which a
        # corrupted .ort carries past ORT's own checks.
        with _names_decoded(artifact):
            self.inputs = [_spec(a) for a in session.get_inputs()]
            self.outputs = [_spec(a) for a in session.get_outputs()]
            self.metadata = dict(session.get_modelmeta().custom_metadata_map)
        self.provider_options = session.get_provider_options()

    @property
    def inference_session(self) -> ort.InferenceSession:
        """The underlying session, for callers that time ``run`` without this wrapper."""
        return self._session

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        try:
            return [np.asarray(o) for o in self._session.run(None, feeds)]
        except Exception as e:  # onnxruntime's error types, as in load()
            raise RunError(one_line(e)) from e

    def assignment(self) -> list[AssignedNode] | None:
        get = getattr(self._session, "get_provider_graph_assignment_info", None)
        if get is None:  # onnxruntime older than the assignment API
            return None
        with _names_decoded(self._artifact):
            return [
                AssignedNode(sub.ep_name, node.name, node.op_type)
                for sub in get()
                for node in sub.get_nodes()
            ]


@contextlib.contextmanager
def _names_decoded(artifact: Artifact | None) -> Iterator[None]:
    try:
        yield
    except UnicodeDecodeError as e:
        where = artifact.path if artifact is not None else "the model"
        raise InputError(f"{where}: holds a name that is not valid UTF-8 ({e.reason})") from e


def _spec(arg) -> TensorSpec:
    shape = tuple(d if isinstance(d, int) and d > 0 else (d or None) for d in (arg.shape or ()))
    return TensorSpec(arg.name, shape, np.dtype(ORT_DTYPES.get(arg.type, object)))


def _threads() -> int:
    return max(1, min(4, os.cpu_count() or 1))


def ort_runtimes() -> list[OrtRuntime]:
    """The ORT runtimes cr-edge knows, with the options each EP is validated under.

    Mobile EPs run in fp32 (fp16 relaxation off) so that the fp32 policy applies; the
    XNNPACK EP gets its own thread pool and ORT's pool is kept to one thread without
    spinning, as ONNX Runtime's XNNPACK documentation advises.
    """
    return [
        OrtRuntime("cpu", CPU),
        OrtRuntime("ort-mobile", CPU, suffixes=(".ort",), mobile=True),
        OrtRuntime(
            "xnnpack",
            "XnnpackExecutionProvider",
            provider_options={"intra_op_num_threads": str(_threads())},
            session_config={"session.intra_op.allow_spinning": "0"},
            intra_op_threads=1,
        ),
        OrtRuntime(
            "nnapi", "NnapiExecutionProvider", provider_options={"NNAPI_FLAG_USE_FP16": "0"}
        ),
        OrtRuntime(
            "coreml",
            "CoreMLExecutionProvider",
            provider_options={
                "ModelFormat": "MLProgram",
                "MLComputeUnits": "ALL",
                "AllowLowPrecisionAccumulationOnGPU": "0",
            },
        ),
    ]
