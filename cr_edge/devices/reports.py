"""What a device sends back, checked before any of it is believed or printed.

A device is a machine the host does not control, and its answer may be truncated,
malformed or hostile: a billion-deep nesting, a string of a gigabyte, a ``NaN`` where a
verdict goes, a row that says PASS without a check behind it. The transport caps the
size; here every field of the envelope, the fingerprint and the report is checked for
its type and bounds, and the validation rows are rebuilt as the same ``RuntimeResult``
objects ``validate`` makes locally, so that a device row is judged by the same code.
Anything else is one ``DeviceError`` line naming the device and the field.
"""

from __future__ import annotations

import json
import math

from cr_edge.devices.transport import DeviceError
from cr_edge.validate.outcome import FAIL, PASS, UNAVAILABLE, Check, Outcome
from cr_edge.validate.tolerances import DerivativeTolerance, Tolerances
from cr_edge.validate.validator import COLUMNS, RuntimeResult

FORMAT, VERSION = "cr-edge-device-run", 1
STATUSES = ("ok", "setup", "busy", "error", "missing")
MAX_STRING = 20_000
MAX_ITEMS = 100_000
MAX_DEPTH = 8


class _Bad(ValueError):
    """A field that is not what the schema says; the message names it."""


def envelope(data: bytes, label: str) -> dict:
    """The agent's envelope from raw stdout: parsed strictly, each field checked."""
    doc = parse(data, label, "its answer")
    try:
        _require(isinstance(doc, dict), "answer", "an object")
        _require(doc.get("format") == FORMAT, "format", repr(FORMAT))
        _require(doc.get("version") == VERSION, "version", str(VERSION))
        _require(doc.get("status") in STATUSES, "status", " or ".join(STATUSES))
        _string(doc.get("message", ""), "message")
        _string(doc.get("stderr", ""), "stderr")
        if "workdir" in doc:
            _string(doc["workdir"], "workdir")
        if doc["status"] == "missing":  # the blobs the device lacks: digests the host sent
            missing = doc.get("missing")
            _require(isinstance(missing, list) and len(missing) <= 10000, "missing", "a list")
            for digest in missing:
                _string(digest, "missing[]")
        for count in ("removed", "freed", "kept"):  # device clean's answer
            if count in doc:
                _require(_is_int(doc[count]) and doc[count] >= 0, count, "a count")
        if "exit_code" in doc:
            _require(_is_int(doc["exit_code"]), "exit_code", "an integer")
        if doc["status"] == "ok" or "fingerprint" in doc:
            fingerprint(doc.get("fingerprint"))
        if "report" in doc:  # a run's report: checked field by field by ``validation``/``profile``
            _require(isinstance(doc["report"], dict), "report", "an object")
    except _Bad as e:
        raise DeviceError(
            f"{label}: answered with an invalid report ({e}); nothing from it is used"
        ) from e
    return doc


def fingerprint(doc: object) -> dict:
    """A fingerprint: a flat object of strings, numbers, booleans, nulls and string lists."""
    _require(isinstance(doc, dict) and len(doc) <= 100, "fingerprint", "a small object")
    assert isinstance(doc, dict)
    for key, value in doc.items():
        _string(key, "fingerprint key")
        if isinstance(value, list):
            _require(len(value) <= 1000, f"fingerprint.{key}", "a short list")
            for item in value:
                _string(item, f"fingerprint.{key}[]")
        else:
            _scalar(value, f"fingerprint.{key}")
    for key in ("arch", "python"):
        _string(doc.get(key), f"fingerprint.{key}")
    return doc


def validation(report: object, label: str) -> dict:
    """A ``validate --json`` report whose every row rebuilds (``rows``)."""
    try:
        rows(report)
    except _Bad as e:
        raise DeviceError(
            f"{label}: sent an invalid validation report ({e}); nothing from it is used"
        ) from e
    assert isinstance(report, dict)
    return report


def rows(report: object) -> list[RuntimeResult]:
    """The report's rows as ``RuntimeResult``; ``_Bad`` naming the first wrong field."""
    _require(isinstance(report, dict), "report", "an object")
    assert isinstance(report, dict)
    _require(isinstance(report.get("passed"), bool), "passed", "true or false")
    results = report.get("results")
    _require(
        isinstance(results, list) and 0 < len(results) <= MAX_ITEMS, "results", "a list of rows"
    )
    assert isinstance(results, list)
    built = [_row(r, f"results[{i}]") for i, r in enumerate(results)]
    verdict = all(o.status != FAIL for r in built for o in (r.outputs, r.derivatives, r.coverage))
    _require(report["passed"] == verdict, "passed", "the verdict its rows give")
    return built


def profile(report: object, label: str) -> dict:
    """A ``profile --json`` report: its rows checked field by field, the rest bounded JSON."""
    try:
        _require(isinstance(report, dict), "report", "an object")
        assert isinstance(report, dict)
        results = report.get("results")
        _require(isinstance(results, list) and len(results) <= MAX_ITEMS, "results", "a list")
        assert isinstance(results, list)
        for i, row in enumerate(results):
            _profile_row(row, f"results[{i}]")
        for key in ("device", "options"):
            _require(isinstance(report.get(key, {}), dict), key, "an object")
        for key in ("comparisons", "skipped"):
            _require(isinstance(report.get(key, []), list), key, "a list")
        _bounded(report, "report", 0)
    except _Bad as e:
        raise DeviceError(
            f"{label}: sent an invalid profile report ({e}); nothing from it is used"
        ) from e
    return report


def _row(doc: object, where: str) -> RuntimeResult:
    _require(isinstance(doc, dict), where, "an object")
    assert isinstance(doc, dict)
    loaded = doc.get("loaded")
    if loaded is not None:
        _string(loaded, f"{where}.loaded")
    tolerances = doc.get("tolerances")
    return RuntimeResult(
        artifact=_string(doc.get("artifact"), f"{where}.artifact"),
        runtime=_string(doc.get("runtime"), f"{where}.runtime"),
        loaded=loaded,
        tolerances=None if tolerances is None else _tolerances(tolerances, f"{where}.tolerances"),
        **{c: _outcome(doc.get(c), f"{where}.{c}") for c in COLUMNS},
    )


def _outcome(doc: object, where: str) -> Outcome:
    _require(isinstance(doc, dict), where, "an object")
    assert isinstance(doc, dict)
    status = doc.get("status")
    _require(status in (PASS, FAIL, UNAVAILABLE), f"{where}.status", "PASS, FAIL or UNAVAILABLE")
    checks = doc.get("checks", [])
    _require(isinstance(checks, list) and len(checks) <= MAX_ITEMS, f"{where}.checks", "a list")
    built = [_check(c, f"{where}.checks[{i}]") for i, c in enumerate(checks)]
    if status == PASS and not where.endswith("coverage"):  # a parity PASS needs its checks
        _require(
            bool(built) and all(c.passed for c in built),
            f"{where}.checks",
            "passing checks behind PASS",
        )
    if status == FAIL and built:
        _require(not all(c.passed for c in built), f"{where}.checks", "a failed check behind FAIL")
    figures = doc.get("figures", {})
    _require(isinstance(figures, dict), f"{where}.figures", "an object")
    _bounded(figures, f"{where}.figures", 0)
    return Outcome(status, _string(doc.get("summary", ""), f"{where}.summary"), built, figures)


def _check(doc: object, where: str) -> Check:
    _require(isinstance(doc, dict), where, "an object")
    assert isinstance(doc, dict)
    shape = doc.get("shape")
    _require(
        isinstance(shape, list) and len(shape) <= 16 and all(_is_int(s) and s >= 0 for s in shape),
        f"{where}.shape",
        "a list of sizes",
    )
    _require(isinstance(doc.get("passed"), bool), f"{where}.passed", "true or false")
    numbers = {}
    for key in ("max_abs", "max_rel", "min_cosine"):
        value = doc.get(key)
        _require(value is None or _is_number(value), f"{where}.{key}", "a number or null")
        numbers[key] = value
    assert isinstance(shape, list)
    return Check(
        name=_string(doc.get("name"), f"{where}.name"),
        shape=tuple(shape),
        passed=doc["passed"],
        tolerance=_string(doc.get("tolerance", ""), f"{where}.tolerance"),
        max_abs=math.nan if numbers["max_abs"] is None else float(numbers["max_abs"]),
        max_rel=math.nan if numbers["max_rel"] is None else float(numbers["max_rel"]),
        min_cosine=None if numbers["min_cosine"] is None else float(numbers["min_cosine"]),
        error=_string(doc.get("error", ""), f"{where}.error"),
    )


def _tolerances(doc: object, where: str) -> Tolerances:
    _require(isinstance(doc, dict), where, "an object")
    assert isinstance(doc, dict)
    sources = doc.get("sources", {})
    _require(
        isinstance(sources, dict) and all(isinstance(v, str) for v in sources.values()),
        f"{where}.sources",
        "an object of strings",
    )
    fd = doc.get("finite_differences")
    bound = doc.get("jacobian_bound")
    _require(bound is None or _is_number(bound), f"{where}.jacobian_bound", "a number or null")
    return Tolerances(
        precision=_string(doc.get("precision"), f"{where}.precision"),
        atol=_number(doc.get("atol"), f"{where}.atol"),
        rtol=_number(doc.get("rtol"), f"{where}.rtol"),
        companion=_derivative(doc.get("companion"), f"{where}.companion"),
        finite_differences=None if fd is None else _derivative(fd, f"{where}.finite_differences"),
        jacobian_bound=bound,
        sources={_string(k, f"{where}.sources"): v for k, v in sources.items()},
    )


def _derivative(doc: object, where: str) -> DerivativeTolerance:
    _require(isinstance(doc, dict), where, "an object")
    assert isinstance(doc, dict)
    return DerivativeTolerance(
        _number(doc.get("rtol"), f"{where}.rtol"),
        _number(doc.get("min_cosine"), f"{where}.min_cosine"),
    )


def _profile_row(doc: object, where: str) -> None:
    _require(isinstance(doc, dict), where, "an object")
    assert isinstance(doc, dict)
    for key in ("artifact", "file", "runtime"):
        _string(doc.get(key), f"{where}.{key}")
    _require(_is_int(doc.get("batch")) and doc["batch"] > 0, f"{where}.batch", "a positive integer")
    threads = doc.get("threads")
    _require(threads is None or _is_int(threads), f"{where}.threads", "an integer or null")
    latency = doc.get("latency")
    _require(isinstance(latency, dict) and latency, f"{where}.latency", "an object")
    assert isinstance(latency, dict)
    for key in ("p50_ms", "p90_ms", "p99_ms", "min_ms", "max_ms", "mean_ms"):
        _number(latency.get(key), f"{where}.latency.{key}")


def parse(data: bytes, label: str, what: str) -> object:
    def refuse(token: str) -> None:
        raise ValueError(f"{token} is not a JSON number")

    try:
        return json.loads(data.decode("utf-8"), parse_constant=refuse)
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        why = "nested too deeply" if isinstance(e, RecursionError) else str(e).splitlines()[0][:120]
        raise DeviceError(
            f"{label}: {what} is not valid JSON ({why}); nothing from it is used"
        ) from e


def _bounded(value: object, where: str, depth: int) -> None:
    """Plain JSON no deeper than ``MAX_DEPTH``, strings and lists within their caps."""
    _require(depth <= MAX_DEPTH, where, f"at most {MAX_DEPTH} levels deep")
    if isinstance(value, dict):
        _require(len(value) <= MAX_ITEMS, where, "a smaller object")
        for key, item in value.items():
            _string(key, f"{where} key")
            _bounded(item, f"{where}.{key}", depth + 1)
    elif isinstance(value, list):
        _require(len(value) <= MAX_ITEMS, where, "a shorter list")
        for i, item in enumerate(value):
            _bounded(item, f"{where}[{i}]", depth + 1)
    else:
        _scalar(value, where)


def _scalar(value: object, where: str) -> None:
    if isinstance(value, str):
        _string(value, where)
    else:
        _require(
            value is None or isinstance(value, bool) or _is_number(value), where, "a JSON scalar"
        )


def _string(value: object, where: str) -> str:
    _require(isinstance(value, str) and len(value) <= MAX_STRING, where, "a string")
    assert isinstance(value, str)
    return value


def _number(value: object, where: str) -> float:
    _require(_is_number(value), where, "a finite number")
    return float(value)  # type: ignore[arg-type]


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _require(ok: bool, where: str, expected: str) -> None:
    if not ok:
        raise _Bad(f"{where} is not {expected}")
