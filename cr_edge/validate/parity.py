"""Parity: does a runtime reproduce PyTorch's outputs and derivatives on the oracle inputs?

Outputs are compared elementwise (max abs / rel error, ``isclose`` under the policy)
plus argmax agreement and, with labels, accuracy. Derivatives are the JVPs
``J(x)·v`` along the oracle's directions, taken from the derivative companion graph
when there is one and by central finite differences on the primal model otherwise,
compared per sample by norm-relative error and cosine similarity. Every comparison
is kept, passing or not, so that a report lists all failures at once.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from cr_edge.runtimes.runtime import RunError, Session
from cr_edge.validate.differences import richardson
from cr_edge.validate.kink_skips import kink_mask, skipped, too_many
from cr_edge.validate.oracle import Oracle
from cr_edge.validate.outcome import COMPANION, COMPANION_Y, FINITE_DIFFERENCES, Check, Outcome
from cr_edge.validate.tolerances import (
    MAX_UNRESOLVED,
    DerivativeTolerance,
    Tolerances,
    finite_difference_steps,
    input_scale,
)

_TINY = np.finfo(np.float32).eps


def output_parity(session: Session, x: np.ndarray, oracle: Oracle, tol: Tolerances) -> Outcome:
    """Run the primal model on ``x`` and compare its outputs with the oracle's."""
    try:
        outputs = session.run_all({session.input_names[0]: x})
    except RunError as e:
        check = Check("y", oracle.y.shape, False, _output_tol(tol), error=f"run failed: {e}")
        return Outcome.from_checks([check], f"run failed: {e}")
    checks = [compare_elementwise("y", outputs[0], oracle.y, tol)]
    for name, out in zip(session.output_names[1:], outputs[1:], strict=True):
        if name in oracle.extra:
            ref = oracle.extra[name]
            checks.append(compare_elementwise(name, out, ref, _own_steps(tol, ref, oracle.y)))
    figures = {"argmax_agreement": argmax_agreement(outputs[0], oracle.y)}
    if oracle.labels is not None and outputs[0].shape == oracle.y.shape and oracle.y.ndim == 2:
        figures["accuracy"] = float(np.mean(outputs[0].argmax(axis=1) == oracle.labels))
        figures["oracle_accuracy"] = float(np.mean(oracle.y.argmax(axis=1) == oracle.labels))
    y = checks[0]
    summary = f"max|Δ| {y.max_abs:.2g} rel {y.max_rel:.2g}"
    if figures["argmax_agreement"] is not None:
        summary += f" argmax {figures['argmax_agreement']:.0%}"
    return Outcome.from_checks(checks, summary, figures)


def _own_steps(tol: Tolerances, ref: np.ndarray, y_ref: np.ndarray) -> Tolerances:
    """int8 bounds an output by its own quantization steps: a second output (an ordinal
    model's rank) spans its own range, so ``y``'s step is rescaled by the ranges' ratio."""
    y_span, span = float(np.ptp(y_ref)), float(np.ptp(ref))
    if tol.precision != "int8" or y_span <= 0 or span <= 0:
        return tol
    return replace(tol, atol=tol.atol * span / y_span)


def derivative_parity(
    session: Session,
    companion: Session | None,
    x: np.ndarray,
    oracle: Oracle,
    tol: Tolerances,
    method: str,
) -> Outcome:
    """JVPs from ``companion`` (method "companion") or finite differences on ``session``."""
    if not oracle.has_derivatives:
        return Outcome.unavailable(f"{oracle.path.name} has no 'v'/'jvp' arrays")
    if method == FINITE_DIFFERENCES and x.dtype.kind != "f":
        return Outcome.unavailable(
            f"inputs are {x.dtype} token ids: no finite differences of discrete ids; "
            "export the JVP companion (derivatives w.r.t. the pooled embedding)"
        )
    bound = tol.derivative(method)
    if bound is None:
        return Outcome.unavailable(
            f"finite differences are not derivatives of a {tol.precision} model "
            "(piecewise constant); export the JVP companion"
        )
    v = oracle.v.astype(x.dtype) if x.dtype.kind == "f" else oracle.v  # text: v is pooled-space
    figures: dict = {"method": method}
    checks: list[Check] = []
    try:
        if method == COMPANION:
            jvp, y = companion_jvp(companion, x, v)
            checks.append(compare_elementwise(COMPANION_Y, y, oracle.y, tol))
        else:
            steps = finite_difference_steps(x, v, tol.precision, input_scale(oracle.x))
            jvp, spread = finite_difference_jvp(session, x, v, steps)
            figures["step_rule"] = (
                "h = eps**(1/3) * (1 + ||x/s||) / ||v/s||, s each feature's spread; central "
                "differences at h, h/2, h/4, "
                "Richardson-combined"
            )
            figures["median_step"] = float(np.median(steps))
    except RunError as e:
        check = Check(
            "jvp", oracle.jvp.shape, False, _deriv_tol(bound, tol), error=f"run failed: {e}"
        )
        return Outcome.from_checks([check], f"{method}: run failed: {e}", figures)
    ref, directions, typical = oracle.jvp, oracle.v, oracle.typical_jvp()
    if method == FINITE_DIFFERENCES:
        # NaN spreads stay in, to fail as non-finite; the float64 copy's kinks are left out
        unresolved = (spread > bound.rtol) | tol.kinked(spread.size)
        figures["unresolved_samples"] = int(unresolved.sum())
        if unresolved.mean() > MAX_UNRESOLVED:
            return Outcome.unavailable(
                f"finite differences do not resolve {unresolved.sum()}/{len(spread)} samples "
                "(kinks such as clips or ReLUs within the step); the companion graph is needed"
            )
        jvp, ref, directions = jvp[~unresolved], ref[~unresolved], directions[~unresolved]
        typical = None if typical is None else typical[~unresolved]
    kinks = kink_mask(session.metadata, oracle, "the model") if method == COMPANION else None
    capped = None
    if kinks is not None:  # see cr_edge.validate.kink_skips
        figures["kink_samples"] = int(kinks.sum())
        capped = too_many(kinks)
    skip = skipped(kinks)
    if skip is not None and jvp.shape[0] == skip.size:
        jvp, ref, directions = jvp[~skip], ref[~skip], directions[~skip]
        typical = None if typical is None else typical[~skip]
    # over the cap nothing is skipped: every sample is judged, and a failure says why
    jvp_check = compare_directional("jvp", jvp, ref, directions, bound, tol, typical)
    if capped is not None and not jvp_check.passed:
        figures["kinks_too_many"] = capped
        jvp_check = replace(jvp_check, error=capped)
    checks.insert(0, jvp_check)
    summary = f"{method}: rel {jvp_check.max_rel:.2g} cos {_fmt_cos(jvp_check.min_cosine)}"
    failed = [c.name for c in checks if not c.passed]
    if failed:  # name what failed: a passing jvp beside a failing companion y reads as a pass
        summary = f"{' and '.join(failed)} failed; {summary}"
    if figures.get("unresolved_samples"):
        summary += f", {figures['unresolved_samples']} sample(s) at kinks skipped"
    if "kinks_too_many" in figures:
        summary += f"; {capped}"
    elif capped is None and figures.get("kink_samples"):
        summary += f", {figures['kink_samples']} sample(s) at guard/ReLU kinks skipped"
    return Outcome.from_checks(checks, summary, figures)


def companion_jvp(
    companion: Session, x: np.ndarray, v: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Run the derivative companion (inputs ``x, v``; outputs ``y, jvp``); return ``(jvp, y)``."""
    outputs = companion.run_all({"x": x, "v": v})
    names = companion.output_names
    jvp = outputs[names.index("jvp")] if "jvp" in names else outputs[1]
    return jvp, outputs[0]


def finite_difference_jvp(
    session: Session, x: np.ndarray, v: np.ndarray, steps: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Richardson-combined central differences on ``session`` and their per-sample spread
    (``cr_edge.validate.differences.richardson``; the policy is in ``tolerances``)."""
    name = session.input_names[0]
    return richardson(lambda points: session.run_all({name: points})[0], x, v, steps)


def compare_elementwise(name: str, got: np.ndarray, ref: np.ndarray, tol: Tolerances) -> Check:
    """``|got - ref| <= atol + rtol*|ref|`` everywhere, with max abs and max rel error."""
    text = _output_tol(tol)
    got = np.asarray(got)
    if got.shape != ref.shape:
        return Check(name, ref.shape, False, text, error=f"shape {got.shape}, oracle {ref.shape}")
    g, r = got.astype(np.float64), ref.astype(np.float64)
    with np.errstate(all="ignore"):  # Inf/NaN outputs become NaN figures and a failed check
        diff = np.abs(g - r)
        max_abs = float(np.max(diff)) if diff.size else 0.0
        max_rel = float(np.max(diff / np.maximum(np.abs(r), _TINY))) if diff.size else 0.0
        passed = bool(np.all(diff <= tol.atol + tol.rtol * np.abs(r)))
    return Check(name, ref.shape, passed and bool(np.all(np.isfinite(g))), text, max_abs, max_rel)


def compare_directional(
    name: str,
    got: np.ndarray,
    ref: np.ndarray,
    v: np.ndarray,
    bound: DerivativeTolerance,
    tol: Tolerances,
    typical: np.ndarray | None = None,
) -> Check:
    """Per-sample ``||got - ref|| / scale`` and cosine; scale ``||ref||``, or ``L||v||`` (int8).

    With ``typical`` (``Oracle.typical_jvp``) the scale is at least that size: a direction
    along which ``J v`` nearly vanishes is held to the bound of a typical direction."""
    text = _deriv_tol(bound, tol)
    got = np.asarray(got)
    if got.shape != ref.shape:
        return Check(name, ref.shape, False, text, error=f"shape {got.shape}, oracle {ref.shape}")
    n = ref.shape[0]
    g = got.reshape(n, -1).astype(np.float64)
    r = ref.reshape(n, -1).astype(np.float64)
    with np.errstate(all="ignore"):  # Inf/NaN derivatives become NaN figures and a failed check
        g_norm, r_norm = np.linalg.norm(g, axis=1), np.linalg.norm(r, axis=1)
        if tol.jacobian_bound:
            v_norm = np.linalg.norm(v.reshape(n, -1).astype(np.float64), axis=1)
            scale = tol.jacobian_bound * v_norm
        else:
            scale = r_norm if typical is None else np.maximum(r_norm, typical)
        rel = np.linalg.norm(g - r, axis=1) / np.maximum(scale, _TINY)
        denom = g_norm * r_norm
        both_zero = (g_norm == 0) & (r_norm == 0)
        if tol.jacobian_bound:
            # A JVP smaller than the error bound itself (v nearly orthogonal to a rank-one
            # Jacobian, as with a regression or ordinal score) has no direction to compare:
            # its sign is within the quantization noise. Such samples are held to ``rel``.
            both_zero |= r_norm < bound.rtol * scale
        cos = np.where(both_zero, 1.0, np.sum(g * r, axis=1) / np.where(denom > 0, denom, 1.0))
        max_abs = float(np.max(np.abs(g - r)))
    max_rel, min_cos = float(np.max(rel)), float(np.min(cos))
    finite = bool(np.all(np.isfinite(g)))
    passed = finite and max_rel <= bound.rtol and min_cos >= bound.min_cosine
    return Check(name, ref.shape, passed, text, max_abs, max_rel, min_cos)


def argmax_agreement(got: np.ndarray, ref: np.ndarray) -> float | None:
    """Fraction of samples whose top class matches the oracle's; None if not a classifier."""
    if ref.ndim != 2 or ref.shape[1] < 2 or np.shape(got) != ref.shape:
        return None
    return float(np.mean(np.argmax(got, axis=1) == np.argmax(ref, axis=1)))


def _output_tol(tol: Tolerances) -> str:
    return f"atol={tol.atol:.3g} rtol={tol.rtol:.3g}"


def _deriv_tol(bound: DerivativeTolerance, tol: Tolerances) -> str:
    scale = f"L||v||, L={tol.jacobian_bound:.3g}" if tol.jacobian_bound else "||Jv||"
    return f"rel<={bound.rtol:.3g} of {scale}, cos>={bound.min_cosine:g}"


def _fmt_cos(cos: float | None) -> str:
    return "n/a" if cos is None else f"{cos:.6f}"
