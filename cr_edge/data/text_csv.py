"""Text CSV files: a header naming a text and a label column, or Yelp's headerless layout.

Yelp Full (``yelp_review_full_csv``) has no header: every row is ``"label","text"`` with
stars 1..5 and newlines escaped as backslash-n. ``auto`` tells the two apart from the
first row: a header names its columns; a Yelp row is two fields, a whole number first.
Rows are read and tokenized a block at a time (the ``csv`` module streams), so the file
is never held in memory, only the ids: ``max_len`` int32 per review, in one array sized by
a first counting pass.
"""

from __future__ import annotations

import csv
import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from cr_edge.data.csv_file import csv_label, encode_csv_labels, parse_csv_file
from cr_edge.data.records import RawData, show
from cr_edge.data.tokenizer import Tokenizer
from cr_edge.errors import InputError

if TYPE_CHECKING:
    import _csv

DATA_FORMATS = ("auto", "header", "yelp")
YELP_CLASSES = 5  # Yelp Full: 1..5 stars
BLOCK = 4096  # texts tokenized at a time: bounds the int64 working set to BLOCK x max_len


def load_text_csv(
    path: Path,
    tokenizer: Tokenizer,
    text_column: str | None = None,
    label: str | None = None,
    data_format: str = "auto",
    task: str = "classify",
) -> RawData:
    """Token ids ``(n, max_len)`` int32 and labels from a text CSV (see the module doc).

    The header layout takes ``text_column`` (default ``text``) and ``label`` (default
    ``label``); Yelp's layout has no names, so naming columns there is refused. A Yelp
    ``train.csv`` with the archive's ``test.csv`` beside it gets that file as its fixed
    test split, so that test figures compare with the published ones.
    """
    if data_format not in DATA_FORMATS:
        raise InputError(f"--data-format {data_format!r}: choose {', '.join(DATA_FORMATS)}")
    path = Path(path)
    # A first pass counts the records (the C parser, no tokenizing) so that the ids go
    # into one array allocated once: peak memory is the ids plus one block, not twice them.
    rows = parse_csv_file(path, lambda reader, _: sum(1 for row in reader if row))
    raw = parse_csv_file(
        path,
        lambda reader, p: _read(reader, p, tokenizer, text_column, label, data_format, task, rows),
    )
    test = path.with_name("test.csv")
    yelp = data_format == "yelp" or (data_format == "auto" and sniff_yelp(path))
    if not (yelp and path.name == "train.csv" and test.is_file()):
        return raw
    fixed = load_text_csv(test, tokenizer, data_format="yelp", task=task)
    note = f"{test}: Yelp's published test split is the test split ({len(fixed.y)} reviews)"
    return dataclasses.replace(raw, test=(fixed.x, fixed.y), notes=(*raw.notes, note))


def sniff_yelp(path: Path) -> bool:
    """True when the first row looks like Yelp's: two fields, a whole number first."""
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            first = next(csv.reader(f), [])
    except (OSError, UnicodeDecodeError, csv.Error):
        return False  # the loader that reads the file reports it, with its line
    return _looks_yelp(first)


def _looks_yelp(first: list[str]) -> bool:
    return len(first) == 2 and _is_whole(first[0])


def _is_whole(cell: str) -> bool:
    return cell.strip().lstrip("+-").isdigit()


def _read(
    reader: _csv.Reader,
    path: Path,
    tokenizer: Tokenizer,
    text_column: str | None,
    label: str | None,
    data_format: str,
    task: str,
    rows: int,
) -> RawData:
    first = next(reader, None)
    if not first:
        raise InputError(f"{path}:1: empty file or blank first line")
    if data_format == "auto":
        data_format = "yelp" if _looks_yelp(first) else "header"
    if data_format == "yelp":
        if text_column or label:
            named = "--text-column" if text_column else "--label"
            raise InputError(
                f"{path}:1: {named} names a column, but the file is in Yelp's headerless "
                '"label","text" layout; drop it (or add a header row)'
            )
        records = _yelp_rows(reader, path, first)
        column = "label"
    else:
        header = [c.strip() for c in first]
        text_column, label = text_column or "text", label or "label"
        shown = ", ".join(show(c, 30) for c in header[:20]) + (", ..." if len(header) > 20 else "")
        for name, option in ((text_column, "--text-column"), (label, "--label")):
            if name not in header:
                raise InputError(
                    f"{path}:1: {option} {show(name)} is not a column; the columns are {shown}"
                )
        if text_column == label:
            raise InputError(f"{path}:1: --text-column and --label both name {show(label)}")
        t, lab = header.index(text_column), header.index(label)
        records = _header_rows(reader, path, len(header), t, lab)
        column = label
    labels, ids = _tokenized(records, path, tokenizer, column, rows)
    where = f"{path}, column {show(column)}"
    if data_format == "yelp":  # the classes are 1..5 whatever a file holds
        y = np.array([int(v) - 1 for v in labels], dtype=np.int64)
        names = [str(k) for k in range(1, YELP_CLASSES + 1)]
    else:
        y, names = encode_csv_labels(labels, where, ordered=task == "ordinal")
    return RawData(ids, y, names, str(path))


def _tokenized(
    records: Iterator[tuple[int, str, str]],
    path: Path,
    tokenizer: Tokenizer,
    column: str,
    capacity: int,
) -> tuple[list[str], np.ndarray]:
    """Labels and ids of every record; ``capacity`` bounds their number (the row count)."""
    labels: list[str] = []
    ids = np.zeros((capacity, tokenizer.max_len), dtype=np.int32)
    block: list[str] = []
    for line, text, lab in records:
        if not text.strip():
            raise InputError(f"{path}:{line}: empty text; fill it in or drop the row")
        if len(labels) == capacity:
            raise InputError(f"{path}:{line}: the file grew while it was read; read it again")
        labels.append(csv_label(lab, f"{path}:{line}", column))
        block.append(text)
        if len(block) == BLOCK:
            ids[len(labels) - BLOCK : len(labels)] = tokenizer.encode(block)
            block = []
    if block:
        ids[len(labels) - len(block) : len(labels)] = tokenizer.encode(block)
    if not labels:
        raise InputError(f"{path}: no rows of text; add rows of label and text")
    return labels, ids[: len(labels)]


def _yelp_rows(reader: _csv.Reader, path: Path, first: list[str]) -> Iterator[tuple[int, str, str]]:
    """(line, text, label) of each Yelp row; a row of another shape means mixed layouts."""
    yield _yelp_row(path, 1, first)
    for row in reader:
        if row:
            yield _yelp_row(path, reader.line_num, row)


def _yelp_row(path: Path, line: int, row: list[str]) -> tuple[int, str, str]:
    if len(row) != 2:
        raise InputError(
            f"{path}:{line}: {len(row)} fields, but the file is in Yelp's layout "
            '("label","text"): the file mixes layouts; keep one'
        )
    label = row[0].strip()
    if not _is_whole(label):
        raise InputError(
            f"{path}:{line}: label {show(label)} is not a star rating 1..{YELP_CLASSES}: "
            "the file mixes layouts (a header row inside Yelp's headerless rows?); keep one"
        )
    if not 1 <= int(label) <= YELP_CLASSES:
        raise InputError(
            f"{path}:{line}: label {show(label)} is outside 1..{YELP_CLASSES} (Yelp's stars); "
            "fix or drop the row"
        )
    return line, row[1], label


def _header_rows(
    reader: _csv.Reader, path: Path, width: int, t: int, lab: int
) -> Iterator[tuple[int, str, str]]:
    for row in reader:
        if not row:
            continue
        if len(row) != width:
            raise InputError(
                f"{path}:{reader.line_num}: {len(row)} fields but the header has {width}: "
                "the file mixes layouts or a row is ragged; make every row as long as the header"
            )
        yield reader.line_num, row[t], row[lab]
