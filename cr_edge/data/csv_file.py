"""CSV files with a header row: one label column, every other one a number."""

from __future__ import annotations

import csv
import math
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import numpy as np

from cr_edge.errors import InputError

if TYPE_CHECKING:
    import _csv
from cr_edge.data.records import (
    RawData,
    first_bad,
    regression_targets,
    require_file,
    require_two_classes,
    show,
)
from cr_edge.data.target_kind import check_classes

T = TypeVar("T")


def load_csv(path: Path, label_column: str, task: str = "classify") -> RawData:
    """A CSV with a header row; the ``label_column`` column holds labels (numbers for
    ``regress``, ordered numeric labels for ``ordinal``), every other one a number.

    Parsed row by row with the ``csv`` module so that every error can name its line.
    """
    return parse_csv_file(Path(path), lambda reader, p: _parse_csv(reader, p, label_column, task))


def parse_csv_file(path: Path, parse: Callable[[_csv.Reader, Path], T]) -> T:
    """``parse(reader, path)`` over the file's rows; unreadable files, bad encodings and
    malformed quoting become one ``InputError`` naming the file (and line)."""
    require_file(path)
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:  # -sig: Excel writes a BOM
            reader = csv.reader(f, strict=True)  # unbalanced quotes: an error, not a guess
            try:
                return parse(reader, path)
            except csv.Error as e:
                raise InputError(
                    f"{path}:{reader.line_num}: malformed CSV ({e}); fix the quoting"
                ) from e
    except UnicodeDecodeError as e:
        raise InputError(
            f"{path}: not UTF-8 text (bad byte {e.object[e.start]:#04x}); save as UTF-8"
        ) from e
    except OSError as e:
        raise InputError(f"{path}: cannot read ({e.strerror}); check the permissions") from e


def _parse_csv(reader: _csv.Reader, path: Path, label_column: str, task: str) -> RawData:
    header = _csv_header(reader, path, label_column)
    t = header.index(label_column)
    columns = [j for j in range(len(header)) if j != t]
    names = [header[j] for j in columns]
    rows: list[np.ndarray] = []
    labels: list[str] = []
    for row in reader:
        if not row:  # a blank line
            continue
        where = f"{path}:{reader.line_num}"
        if len(row) != len(header):
            raise InputError(
                f"{where}: {len(row)} fields but the header has {len(header)}; "
                "make every row as long as the header"
            )
        label = csv_label(row[t], where, label_column)
        if task == "regress":
            label = _csv_number(label, where, label_column)
        labels.append(label)
        rows.append(_csv_features([row[j] for j in columns], where, names))
    if not rows:
        raise InputError(f"{path}: no data rows after the header; add samples, one per line")
    column = f"{path}, column {show(label_column)}"
    if task == "regress":
        return RawData(np.stack(rows), regression_targets(labels, column), [], str(path))
    notes = check_classes(labels, column) if task == "classify" else ()
    y, label_names = encode_csv_labels(labels, column, ordered=task == "ordinal")
    return RawData(np.stack(rows), y, label_names, str(path), notes=notes)


def _csv_header(reader: _csv.Reader, path: Path, label_column: str) -> list[str]:
    header = [name.strip() for name in next(reader, [])]
    if not header:
        raise InputError(
            f"{path}:1: empty file or blank first line; the first line must be a header"
        )
    if all(_is_number(name) for name in header):
        raise InputError(
            f"{path}:1: the first line is all numbers, not a header; "
            "add a header row naming the columns"
        )
    duplicates = sorted({name for name in header if header.count(name) > 1})
    if duplicates:
        raise InputError(
            f"{path}:1: duplicate column {show(duplicates[0])}; give each column its own name"
        )
    if label_column not in header:
        shown = ", ".join(show(n, 30) for n in header[:20]) + (", ..." if len(header) > 20 else "")
        raise InputError(f"{path}:1: no label column {show(label_column)}; the columns are {shown}")
    if len(header) < 2:
        raise InputError(f"{path}:1: only the label column; add at least one feature column")
    return header


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def csv_label(cell: str, where: str, label_column: str) -> str:
    label = cell.strip()
    if not label:
        raise InputError(
            f"{where}, column {show(label_column)}: empty label; fill it in or drop the row"
        )
    return label


def _csv_features(cells: list[str], where: str, names: list[str]) -> np.ndarray:
    """One row as float32; the slow cell-by-cell pass runs only to name a cell numpy refused."""
    with np.errstate(over="ignore"):  # too large for float32 -> inf, reported below
        try:
            values = np.array(cells, dtype=np.float32)
        except ValueError:
            values = np.array(
                [_csv_number(c, where, n) for c, n in zip(cells, names, strict=True)], np.float32
            )
    if not np.isfinite(values).all():
        (j,) = first_bad(values)
        raise InputError(
            f"{where}, column {show(names[j])}: {show(cells[j])} is not a finite float32 number; "
            "replace it with a real value or drop the row"
        )
    return values


def _csv_number(cell: str, where: str, name: str) -> float:
    try:
        return float(cell)
    except ValueError:
        what = "empty cell" if not cell.strip() else f"{show(cell)} is not a number"
        raise InputError(f"{where}, column {show(name)}: {what}; fix or drop the row") from None


def encode_csv_labels(labels: list[str], where: str, ordered: bool) -> tuple[np.ndarray, list[str]]:
    names = _sorted_labels(set(labels))
    require_two_classes(names, where)
    if ordered and not all(_is_number(n) for n in names):
        bad = next(n for n in names if not _is_number(n))
        raise InputError(
            f"{where}: label {show(bad)} is not a number; ordinal labels must be numbers "
            "(their order is the ranking), e.g. 1..5 stars"
        )
    index = {name: i for i, name in enumerate(names)}
    return np.array([index[label] for label in labels], dtype=np.int64), names


def _sorted_labels(labels: set[str]) -> list[str]:
    """Numeric labels sort as numbers ("2" before "10"), so class indices follow their values."""
    try:
        return sorted(labels, key=_numeric_key)
    except ValueError:
        return sorted(labels)


def _numeric_key(label: str) -> tuple[float, str]:
    value = float(label)
    if not math.isfinite(value):  # NaN has no order; sorting on it would depend on set order
        raise ValueError(label)
    return value, label
