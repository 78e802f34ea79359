"""The device-side text tokenizer: FNV-1a against published vectors, reproducible across
processes (unlike Python's salted hash()), torch-free, padded with id 0."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from cr_edge.data.tokenizer import PAD_ID, Tokenizer, fnv1a_32
from cr_edge.errors import InputError


@pytest.mark.parametrize(
    ("data", "expected"),
    [(b"", 0x811C9DC5), (b"a", 0xE40C292C), (b"foobar", 0xBF9CF968)],  # FNV reference values
)
def test_fnv1a_matches_the_reference_vectors(data, expected):
    assert fnv1a_32(data) == expected


def test_words_and_pairs_in_reading_order_with_padding():
    tok = Tokenizer(buckets=1000, max_len=8)
    ids = tok.encode(["The food\\nwas GREAT", ""])
    words = ["the", "food", "was", "great"]
    grams = ["the", "food", "the food", "was", "food was", "great", "was great"]
    assert tok.words("The food\\nwas GREAT") == words
    expected = [1 + fnv1a_32(g.encode()) % 1000 for g in grams] + [PAD_ID]
    assert ids[0].tolist() == expected
    assert ids.dtype == np.int64 and (ids[1] == PAD_ID).all()
    assert ids.min() >= 0 and ids.max() <= tok.buckets


def test_same_ids_in_another_process_with_another_hash_seed():
    code = (
        "from cr_edge.data.tokenizer import Tokenizer; import sys; "
        "print(Tokenizer(buckets=97).encode(['not good at all'])[0, :6].tolist()); "
        "print('torch' in sys.modules)"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    ids, torch_loaded = out.stdout.split("\n")[:2]
    assert ids == str(Tokenizer(buckets=97).encode(["not good at all"])[0, :6].tolist())
    assert torch_loaded == "False"  # device side: no torch


def test_bad_settings_are_input_errors():
    with pytest.raises(InputError, match="buckets"):
        Tokenizer(buckets=1)
    with pytest.raises(InputError, match="hash"):
        Tokenizer(hash="python-hash")
    assert Tokenizer.from_json(Tokenizer(buckets=50).to_json()) == Tokenizer(buckets=50)
