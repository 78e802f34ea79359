"""Row 4: every broken CSV gets an error naming the file, the line and the column."""

from __future__ import annotations

import re

import pytest

from reliability.helpers import one_line_error, run

GOOD = "a,b,label\n1,2,x\n3,4,y\n5,6,x\n7,8,y\n"
CASES = {
    # name: (content, --label, what the message must locate)
    "missing target": (GOOD, "species", r":1\b.*species"),
    "ragged row": ("a,b,label\n1,2,x\n3,y\n5,6,x\n", "label", r":3\b"),
    "text in numeric column": ("a,b,label\n1,2,x\n3,abc,y\n5,6,x\n", "label", r":3\b.*'b'"),
    "empty": ("", "label", r":1\b"),
    "header only": ("a,b,label\n", "label", r"no data rows"),
    "NaN": ("a,b,label\n1,2,x\n3,nan,y\n5,6,x\n", "label", r":3\b.*'b'"),
    "Inf": ("a,b,label\n1,2,x\n3,4,y\ninf,6,x\n", "label", r":4\b.*'a'"),
    "empty cell": ("a,b,label\n1,,x\n3,4,y\n", "label", r":2\b.*'b'"),
    "empty label": ("a,b,label\n1,2,\n3,4,y\n", "label", r":2\b.*label"),
    "unbalanced quote": ('a,b,label\n1,2,x\n"3,4,y\n', "label", r":\d+\b"),
}


@pytest.mark.parametrize("case", CASES)
def test_csv_error_names_file_line_and_column(tmp_path, case):
    content, target, where = CASES[case]
    path = tmp_path / "data.csv"
    path.write_text(content)
    result = run(
        "train", "--data", path, "--label", target, "--epochs", "1", "--out", tmp_path / "ck"
    )
    assert result.exit_code == 2, result.output
    line = one_line_error(result)
    assert str(path) in line and re.search(where, line), line
