"""A generated review corpus with a planted ordinal signal, for tests and benchmarks.

Each review has 1..5 stars; its words are drawn from a neutral pool plus sentiment words
whose mix moves smoothly with the stars (star s picks from the five tone pools with
weights peaked at s), so neighbouring ratings share vocabulary and only an ordinal
model can exploit how near two ratings are. Phrases such as "not good" flip a positive
word, so word pairs carry signal that single words miss. Written in the header layout
(``label,text``) or Yelp's headerless layout (escaped newlines).
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

from cr_edge.artifacts import atomic

_TONES = (
    ("awful", "terrible", "disgusting", "worst", "rude", "cold"),
    ("bland", "slow", "meh", "overpriced", "dirty", "late"),
    ("okay", "fine", "average", "decent", "standard", "plain"),
    ("good", "tasty", "friendly", "fresh", "nice", "quick"),
    ("amazing", "perfect", "delicious", "best", "wonderful", "superb"),
)
_NEUTRAL = ("the", "food", "place", "service", "we", "ordered", "table", "staff", "menu", "was")


def review_texts(n: int, seed: int = 0) -> tuple[list[str], np.ndarray]:
    """``n`` reviews and their stars (1..5), deterministic in ``seed``."""
    rng = np.random.default_rng(seed)
    stars = rng.integers(1, 6, size=n)
    texts = []
    for s in stars:
        weights = np.exp(-0.9 * (np.arange(1, 6) - s) ** 2)
        weights /= weights.sum()
        words = []
        for _ in range(int(rng.integers(8, 30))):
            if rng.random() < 0.5:
                words.append(str(rng.choice(_NEUTRAL)))
                continue
            tone = int(rng.choice(5, p=weights))
            if tone <= 1 and rng.random() < 0.3:  # "not good" reads negative
                words += ["not", str(rng.choice(_TONES[3]))]
            else:
                words.append(str(rng.choice(_TONES[tone])))
        sentence = " ".join(words)
        texts.append(sentence[0].upper() + sentence[1:] + ".")
    return texts, stars


def write_review_corpus(path: Path, n: int, seed: int = 0, layout: str = "header") -> Path:
    """Write ``n`` generated reviews as a CSV (``header``: ``label,text``; or ``yelp``)."""
    texts, stars = review_texts(n, seed)
    buf = io.StringIO()
    writer = csv.writer(buf, quoting=csv.QUOTE_ALL if layout == "yelp" else csv.QUOTE_MINIMAL)
    if layout == "header":
        writer.writerow(["label", "text"])
    for s, text in zip(stars, texts, strict=True):
        if layout == "yelp":  # Yelp escapes newlines as backslash-n
            text = text.replace(". ", ".\\n", 1)
        writer.writerow([int(s), text])
    atomic.write_text(Path(path), buf.getvalue())
    return Path(path)
