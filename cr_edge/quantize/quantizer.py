"""``cr-edge quantize``: an fp32 export in, a smaller export with its oracle out.

``quantize(model, config)`` is the one entry. The model and its derivative
companion are quantized with the same policy (so that derivative parity is measured
at the deployed precision), judged against the parity oracle three ways (``judge``)
by the written tolerance policy, and written as ``model.<tag>.onnx`` with the oracle
beside them and metadata saying how they were made. ``--mode auto`` puts every
candidate of ``policy.auto_candidates`` on one scale: it must pass, be strictly
smaller than fp32 and no slower than ``max_latency_ratio`` x fp32 at batch 1; of those
the least ``score`` (size ratio x batch-1 latency ratio) is kept, 4-bit candidates
(``policy.REPORT_ONLY``) never. If none qualifies fp32 is kept, no quantized model
is written, and the report says so.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto

from cr_edge.artifacts import metadata as schema
from cr_edge.artifacts.atomic import write_bytes, write_json
from cr_edge.artifacts.folder_lock import holds_out
from cr_edge.artifacts.manifest import write_manifest
from cr_edge.errors import CheckFailed, InputError
from cr_edge.export.mobile import convert_to_ort
from cr_edge.quantize import measure as qm
from cr_edge.quantize.apply import apply_policy
from cr_edge.quantize.calibration import feeds_for, read_calibration
from cr_edge.quantize.certification import CandidateFiles, Certify, certify_candidates
from cr_edge.quantize.graph import horner_chain, load_float_model
from cr_edge.quantize.judge import AtBatch, Way, three_ways
from cr_edge.quantize.kink_search import RULE, kink_samples
from cr_edge.quantize.mobile_ops import beyond_mobile_package, contrib_ops, mobile_note
from cr_edge.quantize.policy import (
    LATENCY_TIE,
    REPORT_ONLY,
    QuantConfig,
    QuantPolicy,
    auto_candidates,
)
from cr_edge.quantize.secant import min_cosine, noise_floor, secant, secant_displacement
from cr_edge.runtimes.safe_load import companion_of, oracle_path
from cr_edge.validate.kink_skips import kinks_metadata, skipped
from cr_edge.validate.oracle import Oracle, load_oracle
from cr_edge.validate.tolerances import INT8_LEVELS, SECANT_MIN_COSINE, SECANT_STEPS

MAX_ACCURACY_DROP = (
    0.005  # test-split accuracy (a fraction) an int8 model may lose and still be kept
)
LATENCY_BATCHES = (1, 64)
ORT_KEYS = {"ort": "onnx-ort", "jvp_ort": "jvp-ort", "ort_config": "ort-config"}


@dataclass
class Tried:
    """One candidate policy and its figures; ``why`` says why it passed or failed."""

    policy: QuantPolicy
    bytes: int
    parity: qm.Parity | None
    accuracy: float | None
    latency: dict[int, dict[str, float]]
    passed: bool
    why: str
    model: onnx.ModelProto = field(repr=False)
    companion: onnx.ModelProto | None = field(repr=False)
    ways: list[Way] = field(default_factory=list)
    secant_cos: float | None = None  # primal secant vs fp32's at the same step, batch 1
    devices: dict = field(default_factory=dict)  # device name -> certification.DeviceVerdict

    def to_json(self) -> dict:
        return {
            "policy": self.policy.to_json(),
            "label": self.policy.label,
            "bytes": self.bytes,
            "parity": self.parity.to_json() if self.parity else None,
            "ways": [w.to_json() for w in self.ways],
            "secant_min_cos": self.secant_cos,
            "accuracy": self.accuracy,
            "latency": {f"batch{b}": v for b, v in self.latency.items()},
            "passed": self.passed,
            "why": self.why,
            "devices": {name: v.to_json() for name, v in self.devices.items()},
        }


@dataclass
class QuantizeResult:
    """What ``quantize`` wrote and measured."""

    out: Path
    files: dict[str, Path]
    chosen: Tried | None  # None: auto kept fp32 (no candidate qualified)
    tried: list[Tried]
    fp32_bytes: int
    fp32_accuracy: float | None
    notes: list[str]
    certified_on: list[str] = field(default_factory=list)  # device names (``--certify-on``)

    def to_json(self) -> dict:
        return {
            "files": {k: str(v) for k, v in self.files.items()},
            "chosen": self.chosen.policy.label if self.chosen else "fp32",
            "policy": self.chosen.policy.tag if self.chosen else "fp32",
            "precision": self.chosen.policy.precision if self.chosen else "fp32",
            "fp32": {"bytes": self.fp32_bytes, "accuracy": self.fp32_accuracy},
            "tried": [t.to_json() for t in self.tried],
            "certified_on": self.certified_on,
            "notes": self.notes,
        }


@dataclass
class _Inputs:
    """The float model, its companion, the oracle and calibration, loaded and checked once."""

    path: Path
    model: onnx.ModelProto
    companion: onnx.ModelProto | None
    oracle: Oracle | None
    calib: np.ndarray
    notes: list[str]
    secant: tuple[np.ndarray, np.ndarray] | None = None  # (displacement, fp32 secant)


@holds_out("quantize", where="config.out")
def quantize(model: Path, config: QuantConfig, certify: Certify | None = None) -> QuantizeResult:
    """Quantize the export ``model`` (and ``X.jvp.onnx``) into the folder ``config.out``.

    ``certify``: the devices' verdicts on a candidate (``certification``); a candidate
    that fails on any of them does not pass."""
    policy, out = config.policy, config.out
    src = _load(Path(model), policy, config.calib)
    extra = _extra_metadata(src)
    fp32 = qm.session(src.model)
    fp32_acc = _accuracy(fp32, src.oracle)
    _fp32_secant(src, fp32)
    fp32_bytes = len(src.model.SerializeToString())
    policies = auto_candidates(policy) if policy.mode == "auto" else [policy]
    tried = [_try(src, p, extra, fp32, fp32_acc) for p in policies]
    if certify is not None:
        _certify(src, tried, fp32_bytes, config, certify)
    if policy.mode == "auto":
        chosen = _choose(tried, fp32_bytes, config.max_latency_ratio)
        if chosen is None and config.require:
            raise CheckFailed(_kept_fp32(tried) + " (--require)")
    else:
        chosen = tried[0]
    files = _write(src, out, chosen, config.ort_format) if chosen else {}
    _mobile_notes(src.notes, tried, chosen, files)
    if chosen is None:
        src.notes.append(_kept_fp32(tried))
    result = QuantizeResult(out, files, chosen, tried, fp32_bytes, fp32_acc, src.notes)
    result.certified_on = list(certify.devices) if certify is not None else []
    write_json(out / "quantize.json", result.to_json())  # non-finite figures as "NaN" etc.
    files["report"] = out / "quantize.json"
    write_manifest(out, files.values())
    return result


def _load(path: Path, policy: QuantPolicy, calib: Path | None) -> _Inputs:
    model = load_float_model(path)
    companion_path = companion_of(path)
    companion = load_float_model(companion_path) if companion_path.is_file() else None
    notes = [horner_chain(model).note]
    try:
        oracle = load_oracle(oracle_path(path))
    except InputError:
        if policy.mode == "auto":
            raise
        oracle = None
        notes.append("no parity oracle beside the model: parity and accuracy not measured")
    if calib is not None:
        x = read_calibration(calib, model)
    elif oracle is not None:
        x = oracle.x
        notes.append(
            f"calibrated on the oracle's x ({oracle.path.name}); pass --calib "
            "CHECKPOINT/calib.npz to calibrate on training data"
        )
    else:
        raise InputError(f"{path}: no oracle beside it to calibrate on; pass --calib calib.npz")
    if companion is None:
        notes.append(f"no {companion_path.name}: derivative parity not measured")
    return _Inputs(path, model, companion, oracle, x, notes)


def _extra_metadata(src: _Inputs) -> dict[str, str]:
    """The int8 tolerance inputs: the output step and the Jacobian bound ``L``.

    The step is the one an 8-bit per-tensor quantizer picks for the fp32 output range
    over the calibration set; ``L`` is the largest Jacobian norm over the same set.
    """
    y = qm.predict(qm.session(src.model, threads=0), src.calib)
    digest = hashlib.sha256(src.model.SerializeToString()).hexdigest()[:16]
    bound = qm.jacobian_bound(src.companion, src.calib) if src.companion is not None else None
    return schema.props(
        output_step=float(np.ptp(y)) / INT8_LEVELS,
        quant_source=f"{src.path.name} sha256:{digest}",
        jacobian_bound=bound,
    )


def _try(
    src: _Inputs,
    policy: QuantPolicy,
    extra: dict[str, str],
    fp32: ort.InferenceSession,
    fp32_acc: float | None,
) -> Tried:
    meta = {
        **schema.props(
            precision=policy.precision,
            policy=policy.tag,
            quant_config=policy.to_json(),
            quant_tool=f"onnxruntime.quantization {ort.__version__}",
            # float activations, so nothing to fuse: the weights become float once, at load
            dequantize_at_load=True if policy.mode == "w8" else None,
        ),
        **(extra if policy.precision == "int8" else {}),
    }
    model, scales = apply_policy(src.model, policy, feeds_for(src.model, src.calib))
    meta.update(_output_step(model))
    kinks = _kinks(src, model)
    if kinks is not None:
        meta.update(kinks_metadata(kinks, src.oracle, RULE))
    schema.merge_props_(model, meta)  # the quantizers drop or keep the export's
    companion = None
    if src.companion is not None:
        feeds = feeds_for(src.companion, src.calib)
        companion, _ = apply_policy(src.companion, policy, feeds, scales)
        schema.merge_props_(companion, meta)
    sess = qm.session(model)
    ways: list[Way] = []
    if src.oracle is not None:
        ways, notes = three_ways(model, companion, meta, src.oracle, sess)
        src.notes.extend(f"{policy.label}: {n}" for n in notes)
    par = ways[0].parity if ways else None
    acc = _accuracy(sess, src.oracle)
    x = src.oracle.x if src.oracle is not None else src.calib
    fixed = qm.as_session(sess).fixed_batch
    batches = [fixed] if fixed else LATENCY_BATCHES
    latency = {b: qm.latency_ratio(fp32, sess, np.resize(x, (b, *x.shape[1:]))) for b in batches}
    sec = None
    if src.secant is not None:
        d, ref = src.secant
        step = schema.read({**extra, **meta}).output_step  # fp16: int8's, a figure
        task = {p.key: p.value for p in src.model.metadata_props}
        floor = noise_floor(task, step, int(np.prod(ref.shape[1:])))
        at_b1 = AtBatch(qm.as_session(sess), 1)
        sec = min_cosine(secant(at_b1, src.oracle.x, d), ref, floor, skipped(kinks))
    # fp16 rounds outputs, not inputs: a secant over int8 input steps measures its output
    # rounding, not its derivative, so it is reported for fp16 but judges int8 only
    passed, why = _verdict(ways, acc, fp32_acc, sec if policy.precision == "int8" else None)
    size = len(model.SerializeToString())
    return Tried(policy, size, par, acc, latency, passed, why, model, companion, ways, sec)


def _kinks(src: _Inputs, model: onnx.ModelProto) -> np.ndarray | None:
    """The oracle samples at a guard or ReLU kink of ``model`` (None: no oracle, no kinks)."""
    if src.oracle is None or not src.oracle.has_derivatives:
        return None
    mask, compared = kink_samples(src.model, model, src.oracle.x)
    return mask if compared else None


def _fp32_secant(src: _Inputs, fp32: ort.InferenceSession) -> None:
    """The fp32 model's secant at the step every candidate's is compared at, once."""
    if src.oracle is None or not src.oracle.has_derivatives:
        return
    if src.calib.dtype == np.int64:  # token ids: no step along v; the JVP judges the table
        src.notes.append("primal secant: not measured for token ids (v is at the pooled embedding)")
        return
    d = secant_displacement(src.calib, src.oracle.v)
    src.secant = (d, secant(AtBatch(qm.as_session(fp32), 1), src.oracle.x, d))
    src.notes.append(
        f"primal secant: steps of {SECANT_STEPS} input quantization steps per feature along "
        "the oracle's v, batch 1, compared with fp32's secant at the same steps"
    )


def _output_step(model: onnx.ModelProto) -> dict[str, str]:
    """The real step when static QDQ quantizes ``y`` to 8 bits (its DequantizeLinear scale)."""
    out = model.graph.output[0].name
    inits = {t.name: t for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "DequantizeLinear" and node.output[0] == out and node.input[1] in inits:
            scale = onnx.numpy_helper.to_array(inits[node.input[1]])
            zero = inits.get(node.input[2]) if len(node.input) > 2 else None
            eight_bit = zero is not None and zero.data_type in (TensorProto.INT8, TensorProto.UINT8)
            if scale.size == 1 and eight_bit:  # a 16-bit output keeps the 8-bit step: same policy
                return schema.props(output_step=float(scale))
    return {}


def _verdict(
    ways: list[Way], acc: float | None, fp32_acc: float | None, sec: float | None
) -> tuple[bool, str]:
    """Pass only if every way passes; the reason names each way that failed."""
    if not ways:
        return True, "not checked (no oracle)"
    failed = [w for w in ways if w.failure is not None]
    fails = [failed[0].failure] if failed else []
    if len(failed) > 1:
        fails.append("also fails: " + ", ".join(w.name for w in failed[1:]))
    if acc is not None and fp32_acc is not None and fp32_acc - acc > MAX_ACCURACY_DROP:
        fails.append(f"accuracy -{fp32_acc - acc:.4f}")
    if sec is not None and sec < SECANT_MIN_COSINE:
        fails.append(f"primal secant cos {sec:.4f} vs fp32's (need {SECANT_MIN_COSINE})")
    names = ", ".join(w.name for w in ways)
    return not fails, "; ".join(fails) or f"passes {ways[0].parity.precision} tolerances ({names})"


def qualifies(t: Tried, fp32_bytes: int, cap: float) -> str | None:
    """Why auto may not keep ``t`` (None: it may): parity, size and speed on one scale."""
    if not t.passed:
        return t.why
    if t.policy.mode in REPORT_ONLY:
        return f"{t.policy.mode} is measured for the record, never kept by auto"
    if t.bytes >= fp32_bytes:
        return f"not smaller than fp32 ({t.bytes:,} B >= {fp32_bytes:,} B)"
    first = t.latency[min(t.latency)]
    if first["ratio"] > cap + LATENCY_TIE or first["ratio_p10"] > cap:
        return (
            f"{first['ratio']:.2f}x fp32 at batch {min(t.latency)} (p10 "
            f"{first['ratio_p10']:.2f}x): slower than the {cap:g}x cap"
        )
    return None


def score(t: Tried, fp32_bytes: int) -> float:
    """Size and batch-1 latency on one scale: the product of the two ratios to fp32 (half
    the size at the same speed scores as the same size at twice the speed), so among
    candidates of one size the fastest wins, and a faster one wins over a smaller one only
    as far as it is faster than the other is smaller."""
    return t.bytes / fp32_bytes * t.latency[min(t.latency)]["ratio"]


def _choose(tried: list[Tried], fp32_bytes: int, cap: float) -> Tried | None:
    """The qualifying candidate of least ``score``; None keeps fp32."""
    pool = [t for t in tried if qualifies(t, fp32_bytes, cap) is None]
    for t in tried:  # also when fp32 is kept: each passing candidate says why not it
        if t.passed and t not in pool:
            t.why = f"passes, but {qualifies(t, fp32_bytes, cap)}"
    if not pool:
        return None
    best = min(pool, key=lambda t: score(t, fp32_bytes))
    best.why = f"chosen: {best.why}"
    return best


def _certify(
    src: _Inputs, tried: list[Tried], fp32_bytes: int, config: QuantConfig, certify: Certify
) -> None:
    """Certify on the devices what could be kept, best first: auto's qualifying candidates
    by score, or the one explicit policy (even if it failed here: the devices' figures)."""
    if src.oracle is None:
        raise InputError(f"{src.path}: certifying on devices needs the parity oracle beside it")
    if config.policy.mode == "auto":
        cap = config.max_latency_ratio
        pool = [t for t in tried if qualifies(t, fp32_bytes, cap) is None]
        order = sorted(pool, key=lambda t: score(t, fp32_bytes))
    else:
        order = list(tried)
    certify_candidates(order, certify, lambda t, folder: _candidate_files(src, t, folder))


def _candidate_files(src: _Inputs, t: Tried, folder: Path) -> CandidateFiles:
    """``t`` written into ``folder`` as ``_write`` ships it: model, companion, oracle."""
    path = folder / f"{src.path.stem}.{t.policy.tag}.onnx"
    write_bytes(path, t.model.SerializeToString())
    companion = None
    if t.companion is not None:
        companion = companion_of(path)
        write_bytes(companion, t.companion.SerializeToString())
    oracle = folder / "model.ref.npz"
    write_bytes(oracle, src.oracle.path.read_bytes())
    return CandidateFiles(t.policy.label, t.policy.precision, path, companion, oracle)


def _kept_fp32(tried: list[Tried]) -> str:
    """Why fp32 stays: each candidate that passed and why auto may not keep it (``_choose``
    has written it into ``why``)."""
    passed = [f"{t.policy.label} {t.why}" for t in tried if t.passed]
    why = "; ".join(passed) if passed else "no candidate passed all parity checks"
    return f"kept fp32: {why}; no quantized model written"


def _write(src: _Inputs, out: Path, chosen: Tried, ort_format: bool) -> dict[str, Path]:
    """Models first, the oracle last, so a folder with an oracle has the models it judges."""
    stem = src.path.stem
    files = {"onnx": out / f"{stem}.{chosen.policy.tag}.onnx"}
    write_bytes(files["onnx"], chosen.model.SerializeToString())
    if chosen.companion is not None:
        files["jvp"] = companion_of(files["onnx"])
        write_bytes(files["jvp"], chosen.companion.SerializeToString())
    if ort_format:
        # onnxruntime's "basic" level keeps the int8 ops the mobile package ships (mobile.py)
        made = convert_to_ort(files["onnx"], files.get("jvp"), level="basic")
        files.update({ORT_KEYS[k]: path for k, path in made.items()})
    if src.oracle is not None:
        files["ref"] = out / "model.ref.npz"
        write_bytes(files["ref"], src.oracle.path.read_bytes())
    return files


def _mobile_notes(
    notes: list[str], tried: list[Tried], chosen: Tried | None, files: dict[str, Path]
) -> None:
    """Which candidates use operators a mobile build may lack (``mobile_ops``), and what the
    written ``.ort`` needs from the build that runs it."""
    uses = [(t.policy.label, contrib_ops(t.model, t.companion)) for t in tried]
    note = mobile_note(uses)
    if note:
        notes.append(note)
    if chosen is None or "onnx-ort" not in files:
        return
    lacking = beyond_mobile_package(contrib_ops(chosen.model, chosen.companion))
    if lacking:
        config = files["ort-config"].name
        notes.append(
            f"{files['onnx-ort'].name} needs {', '.join(lacking)} (listed in {config}): run it "
            f"with onnxruntime-android/-c or a build made with --include_ops_by_config {config}"
        )


def _accuracy(sess: ort.InferenceSession, oracle: Oracle | None) -> float | None:
    if oracle is None or "x_test" not in oracle.extra or "y_test" not in oracle.extra:
        return None
    return qm.accuracy(sess, oracle.extra["x_test"], oracle.extra["y_test"])
