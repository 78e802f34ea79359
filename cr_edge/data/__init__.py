"""Training data: built-in sets and user files (CSV, NPZ, IDX, text CSV), splits, normalisation.

Every loader returns the same ``RawData`` (float32 samples, int64 class indices 0..k-1 and
the name of each class), so training never cares where the data came from. User files are
untrusted: any defect becomes one ``InputError`` line naming the file, the line/column or
header field, and what to do -- never a traceback. One module per source (``builtin``,
``csv_file``, ``npz_file``, ``idx_file``, ``text_csv``; ``review_corpus`` writes a test
corpus), ``source`` to choose among them, ``splits`` and
``normalise``; ``records`` holds the types they share.
"""

from cr_edge.data.builtin import BUILTINS, load_builtin
from cr_edge.data.csv_file import load_csv
from cr_edge.data.idx_file import load_idx
from cr_edge.data.normalise import PER_MODES, Normalisation, TargetScale, fit_normalisation
from cr_edge.data.npz_file import load_npz
from cr_edge.data.records import Dataset, RawData
from cr_edge.data.source import load_source
from cr_edge.data.splits import split, subsample_train

__all__ = [
    "BUILTINS",
    "PER_MODES",
    "Dataset",
    "Normalisation",
    "RawData",
    "TargetScale",
    "fit_normalisation",
    "load_builtin",
    "load_csv",
    "load_idx",
    "load_npz",
    "load_source",
    "split",
    "subsample_train",
]
