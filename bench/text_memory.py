"""Peak memory of reading a Yelp-sized text CSV: the file is streamed, only the ids are held.

Writes ``--reviews`` generated reviews in Yelp's headerless layout, then, in a fresh child
process (so nothing else is counted), reads them as ``cr-edge train`` does (``load_source``
then ``split`` in place) and prints the child's peak RSS beside the file's size
and the ids' own size (``n x max_len`` int32). The generated reviews are shorter than
Yelp's (8-30 words against ~130), which changes the file size and the tokenizing time,
not the ids' size: every text takes ``max_len`` ids.
    python -m bench.text_memory [--reviews 650000] [--max-len 256]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.pages import add_page_option, machine, recorded
from tests.review_corpus import write_review_corpus

# VmHWM, not ru_maxrss: the latter survives exec, so it would count the parent's corpus.
CHILD = """
import json, re, sys, time
import sklearn.model_selection  # what split imports: libraries are not the data's memory
from cr_edge.data import load_source, split
from cr_edge.data.tokenizer import Tokenizer
def hwm():
    status = open("/proc/self/status").read()
    return int(re.search(r"VmHWM:\\s+(\\d+)", status).group(1))
base = hwm()
t0 = time.perf_counter()
raw = load_source(sys.argv[1], tokenizer=Tokenizer(max_len=int(sys.argv[2])))
loaded, read_s, ids_bytes = hwm(), time.perf_counter() - t0, raw.x.nbytes
data = split(raw, 0, in_place=True)  # as train does for text
del raw
n = len(data.y_train) + len(data.y_val) + len(data.y_test)
print(json.dumps({"base_kib": base, "after_read_kib": loaded, "read_s": read_s,
                  "peak_kib": hwm(), "ids_bytes": ids_bytes, "n": n}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reviews", type=int, default=650_000)
    parser.add_argument("--max-len", type=int, default=256)
    add_page_option(parser, "text_memory")
    args = parser.parse_args()
    print(machine())
    with tempfile.TemporaryDirectory() as tmp:
        path = write_review_corpus(Path(tmp) / "train.csv", args.reviews, seed=0, layout="yelp")
        size = path.stat().st_size
        out = subprocess.run(
            [sys.executable, "-c", CHILD, str(path), str(args.max_len)],
            capture_output=True,
            text=True,
            check=True,
        )
    r = json.loads(out.stdout)
    mib = 1 << 20
    print(
        f"{r['n']:,} reviews, file {size / mib:.0f} MiB, ids {r['ids_bytes'] / mib:.0f} MiB "
        f"(int32 x max_len {args.max_len}); peak RSS after reading {r['after_read_kib'] / 1024:.0f} "
        f"MiB, after the split {r['peak_kib'] / 1024:.0f} MiB (interpreter and imports "
        f"{r['base_kib'] / 1024:.0f} MiB); read and tokenized in {r['read_s']:.0f} s"
    )


if __name__ == "__main__":
    with recorded("text_memory", "--page" in sys.argv[1:]):
        main()
