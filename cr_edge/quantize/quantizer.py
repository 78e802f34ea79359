"""``cr-edge quantize``: an fp32 export in, an int8 (or fp16) export with its oracle out.

The model and its derivative companion are quantized with the same policy (so that
derivative parity is measured at the deployed precision), judged against the parity
oracle by the written tolerance policy, and written with the oracle beside them and
metadata saying how they were made. ``--mode auto`` tries the candidates of
``quant_policy.auto_candidates`` and keeps the smallest, then fastest, int8 model
that passes; fp16 is the fallback. Nothing is written unless a model is kept.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto

from cr_edge.atomic import write_bytes, write_json
from cr_edge.errors import CheckFailed, InputError
from cr_edge.manifest import write_manifest
from cr_edge.quantize import measure as qm
from cr_edge.quantize.apply import apply_policy
from cr_edge.quantize.calibration import feeds_for, read_calibration
from cr_edge.quantize.graph import horner_chain, load_float_model, set_metadata
from cr_edge.quantize.ort_copies import write_ort
from cr_edge.quantize.policy import QuantPolicy, auto_candidates
from cr_edge.runtimes.safe_load import companion_of, oracle_path
from cr_edge.validate.oracle import Oracle, load_oracle
from cr_edge.validate.tolerances import INT8_LEVELS, JACOBIAN_BOUND_KEY, OUTPUT_STEP_KEY

MAX_ACCURACY_DROP = (
    0.005  # test-split accuracy (a fraction) an int8 model may lose and still be kept
)
LATENCY_BATCHES = (1, 64)


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

    def to_json(self) -> dict:
        return {
            "policy": self.policy.to_json(),
            "label": self.policy.label,
            "bytes": self.bytes,
            "parity": self.parity.to_json() if self.parity else None,
            "accuracy": self.accuracy,
            "latency": {f"batch{b}": v for b, v in self.latency.items()},
            "passed": self.passed,
            "why": self.why,
        }


@dataclass
class QuantizeResult:
    """What ``quantize`` wrote and measured."""

    out: Path
    files: dict[str, Path]
    chosen: Tried
    tried: list[Tried]
    fp32_bytes: int
    fp32_accuracy: float | None
    notes: list[str]

    def to_json(self) -> dict:
        return {
            "files": {k: str(v) for k, v in self.files.items()},
            "chosen": self.chosen.policy.label,
            "fp32": {"bytes": self.fp32_bytes, "accuracy": self.fp32_accuracy},
            "tried": [t.to_json() for t in self.tried],
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


def quantize(
    model: Path,
    out: Path,
    policy: QuantPolicy | None = None,
    calib: Path | None = None,
    ort_format: bool = False,
) -> QuantizeResult:
    """Quantize the export ``model`` (and ``X.jvp.onnx``) into the folder ``out``.

    ``ort_format`` also writes ``.ort`` copies for the onnxruntime mobile package.
    """
    policy = policy or QuantPolicy()
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out}: exists and is not a folder; give a folder")
    src = _load(Path(model), policy, calib)
    extra = _extra_metadata(src)
    fp32 = qm.session(src.model)
    fp32_acc = _accuracy(fp32, src.oracle)
    policies = auto_candidates(policy) if policy.mode == "auto" else [policy]
    tried = [_try(src, p, extra, fp32, fp32_acc) for p in policies]
    chosen = _choose(tried) if policy.mode == "auto" else tried[0]
    files = _write(src, out, chosen, ort_format)
    result = QuantizeResult(
        out, files, chosen, tried, len(src.model.SerializeToString()), fp32_acc, src.notes
    )
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
    meta = {
        OUTPUT_STEP_KEY: repr(float(np.ptp(y)) / INT8_LEVELS),
        "cr_edge.quant.source": f"{src.path.name} sha256:{digest}",
    }
    bound = qm.jacobian_bound(src.companion, src.calib) if src.companion is not None else None
    if bound is not None:
        meta[JACOBIAN_BOUND_KEY] = repr(bound)
    return meta


def _try(
    src: _Inputs,
    policy: QuantPolicy,
    extra: dict[str, str],
    fp32: ort.InferenceSession,
    fp32_acc: float | None,
) -> Tried:
    meta = {
        "cr_edge.precision": policy.precision,
        "cr_edge.quant.policy": json.dumps(policy.to_json()),
        "cr_edge.quant.tool": f"onnxruntime.quantization {ort.__version__}",
        **(extra if policy.precision == "int8" else {}),
    }
    model, scales = apply_policy(src.model, policy, feeds_for(src.model, src.calib))
    meta.update(_output_step(model))
    set_metadata(model, meta)
    companion = None
    if src.companion is not None:
        feeds = feeds_for(src.companion, src.calib)
        companion, _ = apply_policy(src.companion, policy, feeds, scales)
        set_metadata(companion, meta)
    sess = qm.session(model)
    par = None
    if src.oracle is not None:
        par = qm.parity(sess, companion and qm.session(companion), meta, src.oracle)
    acc = _accuracy(sess, src.oracle)
    x = src.oracle.x if src.oracle is not None else src.calib
    batches = [qm.fixed_batch(sess)] if qm.fixed_batch(sess) else LATENCY_BATCHES
    latency = {b: qm.latency_ratio(fp32, sess, np.resize(x, (b, *x.shape[1:]))) for b in batches}
    passed, why = _verdict(par, acc, fp32_acc)
    return Tried(
        policy, len(model.SerializeToString()), par, acc, latency, passed, why, model, companion
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
                return {OUTPUT_STEP_KEY: repr(float(scale))}
    return {}


def _verdict(par: qm.Parity | None, acc: float | None, fp32_acc: float | None) -> tuple[bool, str]:
    if par is None:
        return True, "not checked (no oracle)"
    fails = []
    if not par.outputs_ok:
        fails.append(f"output err {par.max_abs_err:.3g} > atol {par.atol:.3g}")
    if par.derivatives_ok is False:
        fails.append(
            f"jvp cos {par.jvp_min_cos:.4f} (need {par.jvp_min_cos_required}) "
            f"err {par.jvp_max_err:.3g} (max {par.jvp_rtol})"
        )
    if acc is not None and fp32_acc is not None and fp32_acc - acc > MAX_ACCURACY_DROP:
        fails.append(f"accuracy -{fp32_acc - acc:.4f}")
    return not fails, "; ".join(fails) or f"passes {par.precision} tolerances"


def _choose(tried: list[Tried]) -> Tried:
    """Smallest passing int8 model, then fastest at batch 64; else fp16; else fail."""
    ok = [t for t in tried if t.passed]
    for precision in ("int8", "fp16"):
        pool = [t for t in ok if t.policy.precision == precision]
        if pool:
            best = min(pool, key=lambda t: (t.bytes, list(t.latency.values())[-1]["ratio"]))
            best.why = f"chosen: {best.why}"
            return best
    raise CheckFailed(
        "no policy passed: " + " | ".join(f"{t.policy.label}: {t.why}" for t in tried)
    )


def _write(src: _Inputs, out: Path, chosen: Tried, ort_format: bool) -> dict[str, Path]:
    """Models first, the oracle last, so a folder with an oracle has the models it judges."""
    stem = src.path.stem
    files = {"onnx": out / f"{stem}.{chosen.policy.precision}.onnx"}
    write_bytes(files["onnx"], chosen.model.SerializeToString())
    if chosen.companion is not None:
        files["jvp"] = companion_of(files["onnx"])
        write_bytes(files["jvp"], chosen.companion.SerializeToString())
    if ort_format:
        files.update({f"{k}-ort": write_ort(files[k]) for k in ("onnx", "jvp") if k in files})
    if src.oracle is not None:
        files["ref"] = out / "model.ref.npz"
        write_bytes(files["ref"], src.oracle.path.read_bytes())
    return files


def _accuracy(sess: ort.InferenceSession, oracle: Oracle | None) -> float | None:
    if oracle is None or "x_test" not in oracle.extra or "y_test" not in oracle.extra:
        return None
    return qm.accuracy(sess, oracle.extra["x_test"], oracle.extra["y_test"])
