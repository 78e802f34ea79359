"""Which onnxruntime mobile builds can run a candidate: its operators outside ONNX's own domain.

``MatMulNBits`` (``nb8``/``nb4``) and ``GatherBlockQuantized`` (a text model's table) are
onnxruntime contrib operators (domain ``com.microsoft``). Where a phone can run them:

* the full mobile packages, ``onnxruntime-android`` and ``onnxruntime-c``/``-objc``, yes:
  they are built with the contrib operators (no ``--disable_contrib_ops`` in
  ``tools/ci_build/github/android/default_full_aar_build_settings.json``), and this
  machine's onnxruntime, which ``validate``'s ``ort-mobile`` row uses, is such a build;
* a minimal build made from the ``.ort``'s ``required_operators.config``
  (``--include_ops_by_config``), yes: onnxruntime's converter lists them there;
* the pre-built reduced package ``onnxruntime-mobile`` (last released with 1.18), no: its
  operator list (``tools/ci_build/github/android/mobile_package.required_operators.config``)
  has the ``com.microsoft`` operators of ``MOBILE_PACKAGE_CONTRIB`` only, neither of these;
* any build made with ``--disable_contrib_ops``, no.

``quantize`` states this for every candidate that uses such an operator, so a ``.ort``
that passes here is not taken for one that runs on every onnxruntime mobile build.
"""

from __future__ import annotations

import onnx

ONNX_DOMAINS = ("", "ai.onnx")
# com.microsoft operators of the reduced onnxruntime-mobile package's config (its last list)
MOBILE_PACKAGE_CONTRIB = frozenset(
    [
        "BiasGelu",
        "DynamicQuantizeMatMul",
        "FusedConv",
        "FusedGemm",
        "FusedMatMul",
        "Gelu",
        "MatMulIntegerToFloat",
        "NhwcMaxPool",
        "QLinearAdd",
        "QLinearAveragePool",
        "QLinearConv",
        "QLinearGlobalAveragePool",
        "QLinearLeakyRelu",
        "QLinearMul",
        "QLinearSigmoid",
        "SkipLayerNormalization",
    ]
)
WHERE = (
    "they run in onnxruntime's full packages (onnxruntime-android, onnxruntime-c/objc) and "
    "in a minimal build made from the .ort's required_operators.config, not in the "
    "pre-built onnxruntime-mobile package (<= 1.18) nor in a build with --disable_contrib_ops"
)


def contrib_ops(*models: onnx.ModelProto | None) -> list[str]:
    """``domain:op`` of every operator outside ONNX's domain that ``models`` use, sorted."""
    found = {
        f"{node.domain}:{node.op_type}"
        for model in models
        if model is not None
        for node in model.graph.node
        if node.domain not in ONNX_DOMAINS
    }
    return sorted(found)


def beyond_mobile_package(ops: list[str]) -> list[str]:
    """Those of ``ops`` (``contrib_ops``) that the reduced onnxruntime-mobile package lacks."""
    return [op for op in ops if op.split(":", 1)[1] not in MOBILE_PACKAGE_CONTRIB]


def mobile_note(labels_ops: list[tuple[str, list[str]]]) -> str | None:
    """One note for the candidates (``(label, contrib_ops)``) that a mobile build may lack."""
    lacking = [(label, beyond_mobile_package(ops)) for label, ops in labels_ops]
    lacking = [(label, ops) for label, ops in lacking if ops]
    if not lacking:
        return None
    groups: dict[tuple[str, ...], list[str]] = {}
    for label, ops in lacking:
        groups.setdefault(tuple(ops), []).append(label)
    parts = [f"{', '.join(labels)} use {', '.join(ops)}" for ops, labels in groups.items()]
    return f"mobile builds: {'; '.join(parts)}: {WHERE}"
