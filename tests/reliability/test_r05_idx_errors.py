"""Row 5: broken IDX files get a typed error naming the header field at fault."""

from __future__ import annotations

import gzip

import pytest

from cr_edge.data import load_idx
from cr_edge.errors import InputError


def dims(*sizes: int) -> bytes:
    return b"".join(s.to_bytes(4, "big") for s in sizes)


IMAGES = bytes.fromhex("00000803") + dims(4, 2, 2) + bytes(range(16))
LABELS = bytes.fromhex("00000801") + dims(4) + bytes([0, 1, 0, 1])
CASES = {
    # name: (images bytes, labels bytes, the field the message must name)
    "bad magic": (bytes.fromhex("00000802") + IMAGES[4:], LABELS, "'magic'"),
    "labels given as images": (LABELS, LABELS, "'magic'"),
    "truncated magic": (IMAGES[:3], LABELS, "'magic'"),
    "truncated dims": (IMAGES[:10], LABELS, "'rows'"),
    "dims exceed payload": (IMAGES[:4] + dims(4, 3, 2) + IMAGES[16:], LABELS, "rows=3"),
    "payload exceeds dims": (IMAGES + b"\0", LABELS, "count=4"),
    "truncated payload": (IMAGES[:-5], LABELS, "count=4"),
    "zero count": (IMAGES[:4] + dims(0, 2, 2), LABELS, "'count'"),
    "label count mismatch": (IMAGES, bytes.fromhex("00000801") + dims(3) + bytes(3), "'count'"),
    "truncated gzip": (gzip.compress(IMAGES)[:-6], LABELS, "corrupt"),
    "huge dims": (IMAGES[:4] + dims(2**31, 2**31, 2**31) + IMAGES[16:], LABELS, "count="),
}


@pytest.mark.parametrize("case", CASES)
def test_idx_error_names_the_header_field(tmp_path, case):
    images, labels, field = CASES[case]
    (tmp_path / "images.idx").write_bytes(images)
    (tmp_path / "labels.idx").write_bytes(labels)
    with pytest.raises(InputError) as err:
        load_idx(tmp_path / "images.idx", tmp_path / "labels.idx")
    assert field in str(err.value) and "\n" not in str(err.value), str(err.value)
