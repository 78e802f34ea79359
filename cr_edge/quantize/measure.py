"""The figures a quantized model is judged by: parity with the oracle, accuracy, latency.

Parity calls validate's own comparisons (``cr_edge.validate.parity``) under the
written tolerance policy, so that ``quantize --mode auto`` accepts exactly what
``cr-edge validate`` would: outputs within ``atol + rtol |ref|`` (int8: 3 output
steps), companion JVPs with a cosine and a ``L ||v||``-relative error per sample. Latency is measured interleaved (fp32 run,
quantized run, repeat) so that drift of the machine hits both alike, and reported as
the median per-pair ratio with its p10-p90 spread.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort

from cr_edge.profile.timing import measure, ratio_stats
from cr_edge.quantize.calibration import v_shape
from cr_edge.runtimes.ort import OrtSession, file_session_config
from cr_edge.runtimes.runtime import Session
from cr_edge.validate.oracle import Oracle
from cr_edge.validate.outcome import PASS
from cr_edge.validate.parity import COMPANION, derivative_parity, output_parity
from cr_edge.validate.tolerances import tolerances_for

LATENCY_RUNS = 1000  # 100 rounds of 10 runs each: a p10-p90 over rounds
MAX_JACOBIAN_INPUTS = 4096
CHUNK = 256  # samples per run on a dynamic batch: bounds the memory a test set takes


@dataclass(frozen=True)
class Parity:
    """Output and derivative agreement with the oracle, and the verdict under the policy."""

    precision: str
    max_abs_err: float
    atol: float
    max_rel_err: float  # max |a - b| / max |b|: relative to the output scale, not per element
    argmax_agree: float | None
    outputs_ok: bool
    jvp_min_cos: float | None = None
    jvp_max_err: float | None = None
    jvp_rtol: float | None = None
    jvp_min_cos_required: float | None = None
    derivatives_ok: bool | None = None
    kinks: int | None = None  # oracle samples skipped at guard/ReLU kinks (validate.kinks)
    kinks_too_many: str | None = None  # too many to skip, and the check on all samples failed

    @property
    def ok(self) -> bool:
        return self.outputs_ok and self.derivatives_ok is not False

    def to_json(self) -> dict:
        return asdict(self)


def session(model: onnx.ModelProto | bytes, threads: int = 1) -> ort.InferenceSession:
    """A CPU session; one thread by default, as on a small edge core and for stable timing."""
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = threads
    data = model if isinstance(model, bytes) else model.SerializeToString()
    proto = onnx.load_from_string(model) if isinstance(model, bytes) else model
    for key, value in file_session_config(proto).items():  # as the file will run
        options.add_session_config_entry(key, value)
    return ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])


class ExposeValues(ir.passes.InPlacePass):
    """Make the values ``names`` graph outputs too (after the model's own), to read them.

    Intermediate values keep their recorded type as outputs; a name the graph does not
    hold is refused with its name rather than left for onnxruntime to report.
    """

    def __init__(self, names: list[str]) -> None:
        super().__init__()
        self.names = names

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph = model.graph
        values = ir.convenience.create_value_mapping(graph, include_subgraphs=False)
        known = {o.name for o in graph.outputs}
        added = False
        for name in self.names:
            if name in known:
                continue
            if name not in values:
                raise ValueError(f"no value named {name!r} in graph {graph.name!r} to expose")
            graph.outputs.append(values[name])
            known.add(name)
            added = True
        return ir.passes.PassResult(model, modified=added)


def probe(
    model: onnx.ModelProto, names: list[str], feeds: dict[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """The values of the intermediate tensors ``names`` on ``feeds`` (exposed as outputs)."""
    exposed = ir.from_proto(model)
    ExposeValues(names)(exposed)
    sess = as_session(session(ir.serde.serialize_model(exposed), threads=0))
    outputs = sess.run_all(feeds, CHUNK)
    return {n: outputs[sess.output_names.index(n)] for n in names}


def predict(sess: ort.InferenceSession | Session, x: np.ndarray) -> np.ndarray:
    sess = as_session(sess)
    return sess.run_all({sess.input_names[0]: x}, CHUNK)[0]


def accuracy(sess: ort.InferenceSession | Session, x: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy as a fraction in [0, 1], the unit ``train`` reports."""
    return float(np.mean(np.argmax(predict(sess, x), axis=1) == labels))


def parity(
    primal: ort.InferenceSession | Session,
    companion: ort.InferenceSession | Session | None,
    metadata: dict[str, str],
    oracle: Oracle,
) -> Parity:
    """Judge a (quantized) model and its companion exactly as ``cr-edge validate`` does.

    Either may be an onnxruntime session or any ``Session`` (the reference evaluator).
    """
    tol = tolerances_for(metadata, "quantized model", oracle.y, oracle.jvp_per_unit())
    prim = as_session(primal)
    out = output_parity(prim, oracle.x, oracle, tol)
    y = out.checks[0]
    fields = {
        "precision": tol.precision,
        "max_abs_err": y.max_abs,
        "atol": float(tol.atol),
        "max_rel_err": y.max_abs / max(float(np.abs(oracle.y).max()), 1e-30),
        "argmax_agree": out.figures.get("argmax_agreement"),
        "outputs_ok": out.status == PASS,
    }
    if companion is None or not oracle.has_derivatives:
        return Parity(**fields)
    der = derivative_parity(prim, as_session(companion), oracle.x, oracle, tol, COMPANION)
    jvp = der.checks[0]
    return Parity(
        **fields,
        jvp_min_cos=jvp.min_cosine,
        jvp_max_err=jvp.max_rel,
        jvp_rtol=tol.companion.rtol,
        jvp_min_cos_required=tol.companion.min_cosine,
        derivatives_ok=der.status == PASS,
        kinks=der.figures.get("kink_samples"),
        kinks_too_many=der.figures.get("kinks_too_many"),
    )


def as_session(sess: ort.InferenceSession | Session) -> Session:
    """Validate's ``Session`` interface (and its chunked ``run_all``) over an ORT session."""
    return sess if isinstance(sess, Session) else OrtSession(sess)


def jacobian_bound(companion: onnx.ModelProto, x: np.ndarray) -> float | None:
    """Largest spectral norm of ``J(x)`` over the samples ``x``, from the fp32 companion.

    The int8 derivative tolerance is relative to this ``L``; the full Jacobian per
    sample (one JVP per input direction) gives the true per-sample norm rather than
    the lower bound the oracle's random directions would.
    """
    shape = v_shape(companion, x)  # text: v lives at the pooled embedding
    n, d = x.shape[0], int(np.prod(shape[1:]))
    if d > MAX_JACOBIAN_INPUTS:  # one run per input: leave L to the tolerance's fallback
        return None
    sess = as_session(session(companion, threads=0))
    jvp = sess.output_names.index("jvp")
    eye = np.eye(d, dtype=np.float32)
    directions = (np.broadcast_to(e.reshape(shape[1:]), shape) for e in eye)
    cols = [sess.run_all({"x": x, "v": v}, CHUNK)[jvp].reshape(n, -1) for v in directions]
    jac = np.stack(cols, axis=2)  # (n, outputs, inputs)
    return float(np.linalg.norm(jac, ord=2, axis=(1, 2)).max())


def latency_ratio(
    base: ort.InferenceSession,
    other: ort.InferenceSession,
    x: np.ndarray,
    runs: int = LATENCY_RUNS,
) -> dict[str, float]:
    """Median ms of each and the median ``other/base`` ratio with p10/p90, interleaved.

    ``profile``'s measuring loop (rounds of A then B) so the two share one home.
    """
    runners = [
        (lambda feeds, s=s: s.run(None, feeds), {s.get_inputs()[0].name: x}) for s in (base, other)
    ]
    for fn, feeds in runners * 10:  # warm-up: first runs allocate and pick kernels
        fn(feeds)
    timings = measure(runners, runs, None, 0.0)
    ratio = ratio_stats(timings.round_medians(0), timings.round_medians(1))
    return {
        "base_ms": float(np.median(timings.samples_ns[0]) / 1e6),
        "ms": float(np.median(timings.samples_ns[1]) / 1e6),
        "ratio": ratio["ratio"],
        "ratio_p10": ratio["p10"],
        "ratio_p90": ratio["p90"],
    }
