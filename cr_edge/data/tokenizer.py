"""The text tokenizer: lowercased word 1..n-grams hashed into ``buckets`` ids, plain numpy.

It lives on the device side (no torch) so that an app, ``validate`` and ``profile`` turn
text into exactly the ids the model was trained on. The hash is 32-bit FNV-1a of the
n-gram's UTF-8 bytes (words joined by one space), not Python's ``hash()``, which is
salted per process; its name and parameters are stored in the model's metadata
(``cr_edge.data.tokenizer``). Id 0 is padding; an n-gram maps to ``1 + fnv1a(g) % buckets``.
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import asdict, dataclass

import numpy as np

from cr_edge.errors import InputError

HASH = "fnv1a-32"
PAD_ID = 0
_FNV_OFFSET, _FNV_PRIME = 0x811C9DC5, 0x01000193
_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")


def fnv1a_32(data: bytes) -> int:
    """32-bit FNV-1a (Fowler-Noll-Vo): xor each byte in, then multiply by the FNV prime."""
    h = _FNV_OFFSET
    for byte in data:
        h = ((h ^ byte) * _FNV_PRIME) & 0xFFFFFFFF
    return h


@functools.lru_cache(maxsize=1 << 20)
def _gram_hash(gram: str) -> int:
    """``fnv1a_32`` of an n-gram, memoised: word frequencies are Zipfian, so most n-grams of
    a corpus were seen before (a dict lookup instead of a Python loop over their bytes)."""
    return fnv1a_32(gram.encode("utf-8"))


@dataclass(frozen=True)
class Tokenizer:
    """Hashed word n-grams; ``max_len`` ids per text, the first n-grams kept, padded with 0."""

    buckets: int = 1 << 16
    max_len: int = 256
    ngrams: int = 2
    hash: str = HASH
    pad_id: int = PAD_ID

    def __post_init__(self) -> None:
        if not 2 <= self.buckets <= 1 << 24:
            raise InputError(f"tokenizer buckets {self.buckets}: use 2 .. 2**24")
        if not 1 <= self.max_len <= 1 << 16:
            raise InputError(f"tokenizer max_len {self.max_len}: use 1 .. 65536")
        if self.ngrams not in (1, 2, 3):
            raise InputError(f"tokenizer ngrams {self.ngrams}: use 1, 2 or 3")
        if self.hash != HASH or self.pad_id != PAD_ID:
            raise InputError(f"tokenizer: only hash {HASH!r} with pad id {PAD_ID} is known")

    @property
    def vocab(self) -> int:
        """Rows of the embedding table: the buckets plus the padding row."""
        return self.buckets + 1

    def words(self, text: str) -> list[str]:
        # Yelp's CSV escapes newlines as the two characters backslash-n.
        return _WORD.findall(text.replace("\\n", " ").lower())

    def ids(self, text: str) -> list[int]:
        """In reading order: at each word, the word and the n-grams that end there, so a
        truncated text loses its end, not its word pairs."""
        words = self.words(text)
        out: list[int] = []
        for i in range(len(words)):
            for n in range(1, min(self.ngrams, i + 1) + 1):
                out.append(1 + _gram_hash(" ".join(words[i - n + 1 : i + 1])) % self.buckets)
        return out

    def encode(self, texts: list[str]) -> np.ndarray:
        """int64 ids ``(len(texts), max_len)``, padded with ``pad_id``."""
        batch = np.full((len(texts), self.max_len), self.pad_id, dtype=np.int64)
        for row, text in enumerate(texts):
            ids = self.ids(text)[: self.max_len]
            batch[row, : len(ids)] = ids
        return batch

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict | str) -> Tokenizer:
        if isinstance(d, str):
            d = json.loads(d)
        return cls(**d)
