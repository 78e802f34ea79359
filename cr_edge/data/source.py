"""Choosing a loader for what a user named on the command line or in a recipe."""

from __future__ import annotations

from pathlib import Path

from cr_edge.data.builtin import BUILTINS, load_builtin
from cr_edge.data.csv_file import load_csv
from cr_edge.data.idx_file import load_idx
from cr_edge.data.npz_file import load_npz
from cr_edge.data.records import RawData, show
from cr_edge.data.text_csv import load_text_csv, sniff_yelp
from cr_edge.data.tokenizer import Tokenizer
from cr_edge.errors import InputError


def load_source(
    source: str,
    label: str | None = None,
    task: str = "classify",
    text_column: str | None = None,
    data_format: str = "auto",
    tokenizer: Tokenizer | None = None,
) -> RawData:
    """Load what a user named on the command line or in a recipe.

    ``source`` is read as the first of these that fits:

    * a built-in name: ``digits``, ``breast-cancer``, ``wine``, ``mnist1d``, ``diabetes``
      (regression) or ``anes96`` (ordinal) (write ``./digits`` to mean a file of that name);
    * a path ending in ``.csv``: needs ``label``, the name of the label column;
    * a path ending in ``.npz``: arrays ``x`` and ``y``;
    * ``IMAGES,LABELS``: an IDX pair, either file optionally gzip'ed, e.g.
      ``train-images-idx3-ubyte.gz,train-labels-idx1-ubyte.gz`` (a comma, not a colon,
      because colons are part of Windows paths);
    * a single IDX images file (its name contains ``idx``): the labels file beside it is
      found by the MNIST naming convention, ``images`` -> ``labels`` and ``idx3`` -> ``idx1``.

    A ``.csv`` is text when ``text_column`` names its text column, when ``data_format`` is
    ``header`` or ``yelp``, or when it is in Yelp's headerless ``"label","text"`` layout
    (detected when no ``label`` is given): token ids from ``tokenizer``.

    ``label`` is refused for anything but CSV rather than silently ignored. ``task``
    decides what labels are: class labels (``classify``), ordered numeric classes
    (``ordinal``) or float values (``regress``).
    """
    path = Path(source)
    is_csv = source not in BUILTINS and path.suffix.lower() == ".csv"
    if (text_column or data_format != "auto") and not is_csv:
        option = "--text-column" if text_column else "--data-format"
        raise InputError(f"{source}: {option} applies only to CSV sources; remove it")
    if is_csv and (text_column or data_format != "auto" or (not label and _yelp_layout(path))):
        tokenizer = tokenizer or Tokenizer()
        return load_text_csv(path, tokenizer, text_column, label, data_format, task)
    if is_csv:
        if not label:
            raise InputError(f"{path}: a CSV source needs --label, the name of its label column")
        return load_csv(path, label, task)
    if label:
        raise InputError(
            f"{source}: --label (recipe field 'label') applies only to CSV sources; remove it"
        )
    if source in BUILTINS:
        return load_builtin(source, task)
    if path.suffix.lower() == ".npz":
        return load_npz(path, task)
    if "," in source:
        images, _, labels = source.partition(",")
        return load_idx(Path(images.strip()), Path(labels.strip()))
    if "idx" in path.name.lower():
        return load_idx(path, _labels_beside(path))
    raise InputError(
        f"{show(source)}: not a built-in dataset ({', '.join(BUILTINS)}) nor a .csv, .npz or "
        "IDX file; check the spelling"
    )


def _labels_beside(images: Path) -> Path:
    name = images.name.replace("images", "labels").replace("idx3", "idx1")
    if name == images.name:
        raise InputError(
            f"{images}: cannot guess the labels file from this name; give both as IMAGES,LABELS"
        )
    return images.with_name(name)


def _yelp_layout(path: Path) -> bool:
    return path.is_file() and sniff_yelp(path)
