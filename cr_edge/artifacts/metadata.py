"""The model-metadata schema: every ``cr_edge.*`` key a model file carries, in one place.

An ONNX file's ``metadata_props`` (and a ``.pte`` sidecar's ``metadata``) is the contract
between stages: export writes what the model is, quantize adds how it was quantized,
validate reads the tolerance inputs, profile the tokenizer. Each key is a field of
``ModelMetadata``, with its type and its encoding in one place, as ``onnx.proto`` is the
one definition its readers share; a stage never spells another stage's key.

Two words that used to be one: ``precision`` is the arithmetic a model runs in (fp32,
fp16, int8: the tolerance row it is judged by), ``policy`` the quantization recipe's tag
(w8, a8w7, fp16, ...). Files written before the schema (``cr_edge.quant.format`` for the
policy, ``cr_edge.quant.policy`` for its config) still read.

``to_props`` writes strings; ``from_props`` parses and checks them, and a value that does
not parse is one ``InputError`` naming the file and the key.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any

from cr_edge.errors import InputError

if TYPE_CHECKING:
    import onnx

SCHEMA_VERSION = 1
PRECISIONS = ("fp32", "fp16", "int8")
COMPANION_ROLE = "jvp"

# Old spellings read as today's keys (files from before the schema).
_ALIASES = {
    "cr_edge.quant.format": "cr_edge.policy",
    "cr_edge.quant.policy": "cr_edge.quant.config",
}


def _key(name: str, kind: str, doc: str) -> Any:
    """A field of the schema: its property key, how its value is encoded, and why it exists."""
    return field(default=None, metadata={"key": name, "kind": kind, "doc": doc})


@dataclass(frozen=True)
class ModelMetadata:
    """What a model file says it is. ``None`` is "not recorded" (the key is absent)."""

    schema: int | None = _key("cr_edge.schema", "int", "this schema's version")
    version: str | None = _key("cr_edge.version", "str", "cr-edge version that wrote the file")
    role: str | None = _key("cr_edge.role", "str", "'jvp' for a derivative companion")
    precision: str | None = _key("cr_edge.precision", "str", "arithmetic: fp32, fp16 or int8")
    policy: str | None = _key("cr_edge.policy", "str", "quantization policy tag: w8, a8w7, ...")
    # what the net is
    task: str | None = _key("cr_edge.task", "str", "classify, regress or ordinal")
    arch: str | None = _key("cr_edge.arch", "str", "mlp, conv or text")
    activation: str | None = _key("cr_edge.activation", "str", "poly (CR) or a baseline's")
    degree: int | None = _key("cr_edge.degree", "int", "polynomial degree (CR nets)")
    hidden: list | None = _key("cr_edge.hidden", "json", "hidden widths")
    dreg_lambda: float | None = _key("cr_edge.dreg_lambda", "float", "DREG weight trained with")
    input_shape: list | None = _key("cr_edge.input_shape", "json", "one sample's shape")
    normalisation: dict | None = _key("cr_edge.normalisation", "json", "input mean/std")
    labels: list | None = _key("cr_edge.labels", "json", "class names")
    outputs: list | None = _key("cr_edge.outputs", "json", "output names, in order")
    target_normalisation: dict | None = _key(
        "cr_edge.target_normalisation", "json", "regression targets' scale"
    )
    tokenizer: dict | None = _key("cr_edge.tokenizer", "json", "text models' hashed n-grams")
    derivative_input: str | None = _key(
        "cr_edge.derivative_input", "str", "what the companion's v lives in (text: pooled)"
    )
    # how export lowered it
    export_options: dict | None = _key("cr_edge.export_options", "json", "ExportOptions")
    horner_nodes: list | None = _key("cr_edge.horner_nodes", "json", "nodes per Horner chain")
    folds: list | None = _key("cr_edge.folds", "json", "exact folds applied per chain")
    fold_refusals: list | None = _key("cr_edge.fold_refusals", "json", "why a fold declined")
    domain_guard: list | None = _key("cr_edge.domain_guard", "json", "per-chain lo/hi bounds")
    domain_guard_margin: float | None = _key(
        "cr_edge.domain_guard_margin", "float", "guard's margin past the training range"
    )
    sensitivity_p50: float | None = _key("cr_edge.sensitivity_p50", "float", "DREG sensitivity")
    sensitivity_p99: float | None = _key("cr_edge.sensitivity_p99", "float", "DREG sensitivity")
    # tolerance inputs and quantize's record
    output_step: float | None = _key(
        "cr_edge.quant.output_step", "float", "int8 output step: the int8 tolerance's unit"
    )
    jacobian_bound: float | None = _key(
        "cr_edge.jacobian_bound", "float", "largest Jacobian norm on calibration data"
    )
    kinks: dict | None = _key("cr_edge.quant.kinks", "json", "oracle samples at a kink")
    quant_config: dict | None = _key("cr_edge.quant.config", "json", "the QuantPolicy")
    quant_tool: str | None = _key("cr_edge.quant.tool", "str", "quantizer and its version")
    quant_source: str | None = _key("cr_edge.quant.source", "str", "fp32 file and digest")
    dequantize_at_load: bool | None = _key(
        "cr_edge.quant.dequantize_at_load",
        "bool",
        "true: run with onnxruntime's session.disable_quant_qdq=1 (int8 weights become float at load)",
    )

    def to_props(self) -> dict[str, str]:
        """The recorded fields as ``metadata_props`` strings (absent fields are not written)."""
        return {
            f.metadata["key"]: _encode(f.metadata["kind"], value)
            for f in fields(self)
            if (value := getattr(self, f.name)) is not None
        }

    @classmethod
    def from_props(cls, props: Mapping[str, str], source: str = "model") -> ModelMetadata:
        """Parse ``props``; keys that are not ``cr_edge.*`` are the user's and are left alone."""
        by_key = {f.metadata["key"]: f for f in fields(cls)}
        values: dict[str, Any] = {}
        for raw_key, text in props.items():
            key = _ALIASES.get(raw_key, raw_key)
            f = by_key.get(key)
            if f is None or (key != raw_key and key in props):
                continue  # not ours, or an old alias beside its new spelling
            values[f.name] = _decode(f.metadata["kind"], text, key, source)
        meta = cls(**values)
        meta._check(source)
        return meta

    def _check(self, source: str) -> None:
        if self.schema is not None and self.schema > SCHEMA_VERSION:
            raise InputError(
                f"{source}: metadata {key('schema')}={self.schema} is newer than this cr-edge "
                f"reads ({SCHEMA_VERSION}); upgrade cr-edge"
            )
        if self.precision is not None and self.precision not in PRECISIONS:
            raise InputError(
                f"{source}: metadata {key('precision')}={self.precision!r}; "
                f"expected one of {PRECISIONS}"
            )


def key(name: str) -> str:
    """The property key of field ``name`` (for messages that name it)."""
    for f in fields(ModelMetadata):
        if f.name == name:
            return f.metadata["key"]
    raise KeyError(name)


def props(**values: Any) -> dict[str, str]:
    """``metadata_props`` for just these fields: what a stage adds to an existing record."""
    return ModelMetadata(**values).to_props()


def read(props: Mapping[str, str], source: str = "model") -> ModelMetadata:
    """``ModelMetadata.from_props``, the readers' short name."""
    return ModelMetadata.from_props(props, source)


def _encode(kind: str, value: Any) -> str:
    if kind in ("json", "bool"):
        return json.dumps(value)
    if kind == "float":
        return repr(float(value))
    return str(value)


def _decode(kind: str, text: str, key: str, source: str) -> Any:
    try:
        if kind == "json":
            return json.loads(text)
        if kind == "bool":
            if text not in ("true", "false"):
                raise ValueError("neither true nor false")
            return text == "true"
        if kind == "int":
            return int(text)
        if kind == "float":
            value = float(text)
            if not math.isfinite(value):
                raise ValueError("not finite")
            return value
    except ValueError as e:  # json.JSONDecodeError is a ValueError
        raise InputError(
            f"{source}: metadata {key}={text[:60]!r} is not a valid {kind} ({e}); re-export or "
            "re-quantize the model"
        ) from e
    return text


# --- writing the record into an ONNX model: the one place any stage does it -------------

PRODUCER = "cr-edge"  # an export's ``producer_name``


def write_props_(
    model: onnx.ModelProto, props: Mapping[str, Any], producer: str | None = None
) -> None:
    """Make ``model``'s ``metadata_props`` exactly ``props`` (sorted by key), in place.

    Only the model-level record changes, through onnx's own setter: no graph is touched,
    so no type, value or byte of the graph moves (a round trip through an IR would add
    value types to the file, and quantize compares file sizes). ``producer`` also sets the
    ``producer_name``. onnx is imported here: the readers of this module (validate and
    runtimes, on a device) need none.
    """
    from onnx.helper import set_model_props

    set_model_props(model, {k: str(props[k]) for k in sorted(props)})
    if producer is not None:
        model.producer_name = producer


def merge_props_(model: onnx.ModelProto, updates: Mapping[str, Any]) -> None:
    """Merge ``updates`` into ``model``'s ``metadata_props`` (sorted by key), in place.

    What quantize adds to an export's record: the keys it does not update are kept.
    """
    write_props_(model, {**{p.key: p.value for p in model.metadata_props}, **updates})
