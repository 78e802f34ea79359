"""The written tolerance policy: how close a runtime must come to the PyTorch oracle.

One table per precision, used by ``validate`` and by the tests alike. Outputs pass
when every element satisfies ``|a - b| <= atol + rtol * |b|`` (numpy's ``isclose``,
Polygraphy's elementwise rule). Derivatives (JVPs ``J(x)·v``) are compared per sample
as a norm-relative error ``||a - b|| / ||b||`` and a cosine similarity, because an
elementwise rule on a directional derivative is dominated by entries that happen to
be near zero.

fp32
    Outputs: atol = rtol = 1e-5, Polygraphy's defaults and Optimum's export atol; the
    PyTorch ONNX exporter's own tests use rtol 1e-5 / atol 2e-5. cr-edge fails past
    it where Optimum only warns. That atol is a floor, raised to what the model itself
    needs: ``ROUNDING_SAFETY x (e_graph + e_oracle)``, where ``e_graph`` is the exported
    graph's float32-vs-float64 difference on the oracle inputs (``cr_edge.validate.rounding``)
    and ``e_oracle`` the oracle's own (its arrays ``y_float64``/``jvp_float64``; for older
    oracles, taken equal to ``e_graph``). A runtime and the oracle are two float32
    evaluations; each is off from exact by its own error, so they may differ by the sum;
    the factor 2 covers kernels that order the sums differently from the CPU run measured.
    A net trained without DREG has large, cancelling coefficients (``sum |a_k||z|^k`` far
    above ``|p(z)|``) and a correct export of it differs by 1.2e-4: it passes, while a 1%
    change of one coefficient moves the outputs ~1e-2 and still fails. Companion
    derivatives get the same treatment with norm-relative errors, floor 1e-4.
    Derivatives from the companion graph: rtol 1e-4, cosine >= 0.9999. The companion
    and autograd compute the same products in a different order (``p'(z)`` by Horner
    on ``k*a_k`` against autograd's chain through the Horner steps), so their
    difference is rounding only: a few ulps per layer, ~1e-6 in norm for our depths.
    1e-4 leaves that margin while a 1% change of one coefficient moves the JVP ~1e-2.
    Derivatives by finite differences: rtol 1e-3 as a floor, cosine >= 0.999. Per sample the
    step is ``h = eps**(1/3) * (1 + ||x/s||) / ||v/s||`` (eps of the compute dtype):
    central differences ``D(h) = (f(x + h v) - f(x - h v)) / 2h`` have truncation
    error ~h^2 and rounding error ~eps/h, balanced at h ~ eps**(1/3); ``1 + ||x||``
    is the input scale, as in the Newton-Krylov rule for directional differences,
    measured in units of each feature's own spread ``s`` (``input_scale``: its standard
    deviation over the oracle inputs). The rule in raw units assumed features of scale
    1: diabetes' are ~0.05, so its step spanned 0.09 standard deviations, and digits'
    0.3; both fell out of tolerance (rel 1.0e-3 and 4.2e-2) on correct exports. In
    units of ``s`` the same exports step 0.017 and 0.06 and agree with their companions
    to 1.4e-4 and 8.5e-5.
    The estimate is the Richardson combination ``(4 D(h/2) - D(h)) / 3``, which
    cancels the h^2 term: on an exported digits CR net ``D(h)`` alone is off by up to
    16% (its polynomials are steep), the combination by 5e-5; on the test net by
    1.1e-4 — 9x inside the tolerance, 300x below the ~3e-2 a 1% change of one
    coefficient causes. The same combination from ``(h/2, h/4)`` must agree with it
    to within rtol: where it does not, a kink (the domain-guard clip, a ReLU) lies
    within the step, finite differences do not estimate the derivative there, and
    the sample is skipped and counted. More than 10% skipped and the check is
    UNAVAILABLE rather than guessed (the companion graph is then needed). A kink
    closer to ``x`` than ~1% of the step escapes that test; the float64 copy catches
    it: ``rounding`` measures, per sample, the float32 estimate against the float64
    estimate at the same step and that against the float64 derivative (float64's own
    step). A sample whose float64 estimate misses the derivative by more than the floor
    has a kink within the step and is skipped and counted (``kinked_samples``); on the
    others the bound is ``ROUNDING_SAFETY x`` (the largest measured error + the oracle's
    own), never below the floor. On MNIST-1D's depth-1 w512 CR net (the quick Fair
    Fight's latency pair) one sample's estimate was off by 2.5e-3 with a spread of
    1.2e-4 (float32 rounding 4e-5 of it): a kink; with it skipped, the measured bound is
    1.8e-3 and the worst judged sample 7.1e-4, while a 1% change of one coefficient
    tensor still moves the estimate 1.4e-2. Finite differences are the fallback for
    smooth models, the companion is the check for all.
fp16
    Unit roundoff 4.9e-4; a length-n dot product accumulates ~sqrt(n) of them, so
    widths 32..512 reach 3e-3..1e-2: outputs atol = rtol = 1e-2. Companion
    derivatives rtol 2e-2, cosine >= 0.999; finite differences (h from fp16 eps,
    ~1/10 of the input scale) rtol 5e-2, cosine >= 0.99.
int8
    A quantized output is only defined to its quantization step: outputs atol =
    3 steps, rtol 0 (half a step from the final requantization plus the rounding
    carried through the earlier layers), the step read from the metadata
    ``cr_edge.quant.output_step``. Derivatives are measured against the model's
    Jacobian bound ``L`` (``cr_edge.jacobian_bound``): the per-sample error
    ``||a - b|| / (L ||v||)`` must stay <= 5e-2 (per-tensor int8 weights resolve
    1/255 of their range, a ~1% error per layer over a few layers), cosine >= 0.99.
    A JVP near zero is therefore not held to a relative bound it cannot meet.
    Finite differences of a quantized model are not a derivative (the graph is
    piecewise constant in ``x``), so int8 derivatives need the companion.
    The deployed primal graph is also held to a secant check (``quantize.secant``):
    ``(f(x + h v) - f(x - h v)) / 2h`` with ``h v`` spanning ``SECANT_STEPS`` = 4
    input quantization steps, per-sample cosine >= 0.99 with the fp32 model's
    secant at the same ``h`` (the companion's int8 cosine: the two derivative views
    are held alike). fp16 rounds outputs rather than inputs, so there the secant is
    reported, not judged. Fallbacks when the metadata is absent: the step an 8-bit per-tensor quantizer
    would pick for the oracle's output range, ``(max y - min y) / 255``; and for
    ``L`` the largest ``||J v|| / ||v||`` over the oracle samples (a lower bound of
    the true ``L``, so the check errs strict).

Every number can be overridden (``--atol``, ``--rtol``, ``--deriv-rtol``,
``--min-cosine``); the report records where each one came from.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

import numpy as np

from cr_edge.artifacts import metadata as schema
from cr_edge.errors import InputError
from cr_edge.validate.differences import (  # noqa: F401  (the step rule, read from here too)
    COMPUTE_EPS,
    finite_difference_steps,
    input_scale,
)
from cr_edge.validate.rounding import RoundingError

PRECISIONS = schema.PRECISIONS
INT8_OUTPUT_STEPS = 3.0
INT8_LEVELS = 255
SECANT_STEPS = 4  # input quantization steps the int8 primal secant spans
SECANT_MIN_COSINE = 0.99  # int8 primal secant vs fp32's at the same step
MAX_UNRESOLVED = 0.1  # finite differences judge a model only if >= 90% of samples resolve
ROUNDING_SAFETY = 2.0  # fp32: atol >= 2 x (graph's + oracle's own float32 error), see above


@dataclass(frozen=True)
class DerivativeTolerance:
    """Bound on one derivative method: norm-relative error and cosine similarity."""

    rtol: float
    min_cosine: float


@dataclass(frozen=True)
class Tolerances:
    """The numbers one comparison uses, and where each came from."""

    precision: str
    atol: float
    rtol: float
    companion: DerivativeTolerance
    finite_differences: DerivativeTolerance | None  # None: not a derivative at this precision
    jacobian_bound: float | None = None  # int8: derivative errors are relative to L*||v||
    sources: dict[str, str] = field(default_factory=dict)
    # Oracle samples at which the float64 copy shows that finite differences at validate's
    # step miss the derivative (a kink within the step): skipped and counted, never judged.
    kinked_samples: tuple[int, ...] = ()

    def derivative(self, method: str) -> DerivativeTolerance | None:
        """The bound for ``method`` ("companion" or "finite-differences")."""
        return self.companion if method == "companion" else self.finite_differences

    def kinked(self, n: int) -> np.ndarray:
        """``kinked_samples`` as a mask over ``n`` samples (none if the count differs)."""
        mask = np.zeros(n, dtype=bool)
        if self.kinked_samples and max(self.kinked_samples) < n:
            mask[list(self.kinked_samples)] = True
        return mask

    def to_json(self) -> dict:
        out = asdict(self)
        out["kinked_samples"] = len(self.kinked_samples)
        return out


@dataclass(frozen=True)
class Overrides:
    """User overrides from the command line; None keeps the policy value."""

    atol: float | None = None
    rtol: float | None = None
    deriv_rtol: float | None = None
    min_cosine: float | None = None

    def __post_init__(self) -> None:
        for name in ("atol", "rtol", "deriv_rtol"):
            value = getattr(self, name)
            if value is not None and not (np.isfinite(value) and value >= 0):
                raise InputError(
                    f"--{name.replace('_', '-')} must be a finite number >= 0, got {value}"
                )
        if self.min_cosine is not None and not -1.0 <= self.min_cosine <= 1.0:
            raise InputError(f"--min-cosine must lie in [-1, 1], got {self.min_cosine}")


POLICY: dict[str, Tolerances] = {
    "fp32": Tolerances(
        "fp32", 1e-5, 1e-5, DerivativeTolerance(1e-4, 0.9999), DerivativeTolerance(1e-3, 0.999)
    ),
    "fp16": Tolerances(
        "fp16", 1e-2, 1e-2, DerivativeTolerance(2e-2, 0.999), DerivativeTolerance(5e-2, 0.99)
    ),
    "int8": Tolerances("int8", 0.0, 0.0, DerivativeTolerance(5e-2, 0.99), None),
}


def precision_of(metadata: dict[str, str], source: str) -> str:
    """The precision a model declares; an absent key means fp32 (not a quantized export)."""
    return schema.read(metadata, source).precision or "fp32"


def tolerances_for(
    metadata: dict[str, str],
    source: str,
    y_ref: np.ndarray,
    jvp_per_unit: np.ndarray | None,
    overrides: Overrides | None = None,
    rounding: RoundingError | None = None,
    oracle_error: tuple[float, float | None] | None = None,
) -> Tolerances:
    """Tolerances for one model: the policy row for its precision, int8 figures, then overrides.

    ``source`` names the model in messages; ``jvp_per_unit`` is ``||J v|| / ||v||`` per
    oracle sample, the int8 fallback for ``L``. For fp32, ``rounding`` (the graph's
    measured float32 error) and ``oracle_error`` (``Oracle.own_error``) raise the floor.
    """
    meta = schema.read(metadata, source)
    precision = meta.precision or "fp32"
    tol = POLICY[precision]
    sources = {"atol": f"policy {precision}", "rtol": f"policy {precision}"}
    sources["derivatives"] = f"policy {precision}"
    if precision == "fp32" and rounding is not None:
        tol = _from_rounding(tol, rounding, oracle_error, sources)
    if precision == "int8":
        step, step_src = _positive(meta.output_step, "output_step", source)
        if step is None:
            step = float(np.ptp(y_ref)) / INT8_LEVELS
            step_src = "oracle output range / 255 (no cr_edge.quant.output_step)"
        bound, bound_src = _positive(meta.jacobian_bound, "jacobian_bound", source)
        if bound is None and jvp_per_unit is not None and jvp_per_unit.size:
            bound = float(np.max(jvp_per_unit))
            bound_src = "max ||Jv||/||v|| over the oracle (no cr_edge.jacobian_bound)"
        tol = replace(tol, atol=INT8_OUTPUT_STEPS * step, jacobian_bound=bound)
        sources["atol"] = f"{INT8_OUTPUT_STEPS:g} x output step {step:.3g} from {step_src}"
        sources["jacobian_bound"] = bound_src or "unknown"
    return _apply(tol, overrides or Overrides(), sources)


def _from_rounding(
    tol: Tolerances,
    rounding: RoundingError,
    oracle_error: tuple[float, float | None] | None,
    sources: dict[str, str],
) -> Tolerances:
    """The fp32 floor raised to ``ROUNDING_SAFETY x (e_graph + e_oracle)`` (module docstring)."""
    oracle_out, oracle_jvp = oracle_error or (rounding.output_abs, rounding.jvp_rel)
    whose = "the oracle's y_float64" if oracle_error else "assumed equal (no y_float64)"
    need = ROUNDING_SAFETY * (rounding.output_abs + oracle_out)
    if need > tol.atol:
        sources["atol"] = (
            f"{ROUNDING_SAFETY:g} x (graph float32-vs-float64 {rounding.output_abs:.2g} + "
            f"oracle {oracle_out:.2g}, {whose}) on the oracle inputs"
        )
        tol = replace(tol, atol=need)
    else:
        sources["atol"] = (
            f"policy fp32 (measured rounding needs {need:.2g}: graph {rounding.output_abs:.2g}"
            f" + oracle {oracle_out:.2g}, x{ROUNDING_SAFETY:g})"
        )
    if rounding.jvp_rel is not None:
        need = ROUNDING_SAFETY * (rounding.jvp_rel + (oracle_jvp or rounding.jvp_rel))
        if need > tol.companion.rtol:
            tol = replace(tol, companion=replace(tol.companion, rtol=need))
            sources["derivatives"] = (
                f"{ROUNDING_SAFETY:g} x (companion float32-vs-float64 {rounding.jvp_rel:.2g} + "
                f"oracle {oracle_jvp or rounding.jvp_rel:.2g}) per-sample relative"
            )
        else:
            sources["derivatives"] = f"policy fp32 (measured rounding needs {need:.2g})"
    if rounding.fd_rounding is not None and rounding.fd_step is not None:
        tol = _finite_differences_from_rounding(tol, rounding, oracle_jvp, sources)
    return tol


def _finite_differences_from_rounding(
    tol: Tolerances, rounding: RoundingError, oracle_jvp: float | None, sources: dict[str, str]
) -> Tolerances:
    """The fp32 finite-difference bound from the float64 copy (module docstring): samples
    whose float64 estimate misses the float64 derivative by more than the policy floor have
    a kink within the step and are skipped; on the others the bound is ``ROUNDING_SAFETY x``
    (the estimate's measured error + the oracle's own), the policy's rtol its floor."""
    floor = tol.finite_differences
    kinked = rounding.fd_step > floor.rtol  # NaN (a broken graph) is not skipped: it fails
    smooth = ~kinked
    if not smooth.any():
        return tol
    measured = float(np.max(rounding.fd_rounding[smooth] + rounding.fd_step[smooth]))
    oracle = oracle_jvp if oracle_jvp is not None else measured
    need = ROUNDING_SAFETY * (measured + oracle)
    if need > floor.rtol:
        tol = replace(tol, finite_differences=replace(floor, rtol=need))
        text = (
            f"{ROUNDING_SAFETY:g} x (float32 finite differences vs the float64 copy's "
            f"derivative {measured:.2g} + oracle {oracle:.2g}) per-sample relative"
        )
    else:
        text = f"policy fp32 (measured finite-difference error needs {need:.2g})"
    if kinked.any():
        text += f"; {int(kinked.sum())} sample(s) with a kink within the step skipped"
    sources["finite_differences"] = text
    return replace(tol, kinked_samples=tuple(int(i) for i in np.flatnonzero(kinked)))


def _apply(tol: Tolerances, o: Overrides, sources: dict[str, str]) -> Tolerances:
    if o.atol is not None:
        tol, sources["atol"] = replace(tol, atol=o.atol), "--atol"
    if o.rtol is not None:
        tol, sources["rtol"] = replace(tol, rtol=o.rtol), "--rtol"
    if o.deriv_rtol is not None or o.min_cosine is not None:
        tol = replace(
            tol,
            companion=_override(tol.companion, o),
            finite_differences=tol.finite_differences and _override(tol.finite_differences, o),
        )
        sources["derivatives"] = "--deriv-rtol/--min-cosine"
    return replace(tol, sources=sources)


def _override(d: DerivativeTolerance, o: Overrides) -> DerivativeTolerance:
    return DerivativeTolerance(
        d.rtol if o.deriv_rtol is None else o.deriv_rtol,
        d.min_cosine if o.min_cosine is None else o.min_cosine,
    )


def _positive(value: float | None, name: str, source: str) -> tuple[float | None, str]:
    """A recorded tolerance input, which must be a positive number to mean anything."""
    if value is None:
        return None, ""
    key = schema.key(name)
    if not value > 0:
        raise InputError(f"{source}: metadata {key}={value!r} is not a positive number")
    return value, f"metadata {key}"
