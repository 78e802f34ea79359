"""Training recipes: one dataclass, read from the TOML files of the model zoo.

A recipe is everything ``cr-edge train`` needs to reproduce a checkpoint: data
source, architecture, DREG strength and optimiser settings. It is validated on
construction and stored in the checkpoint's ``config.json``.
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass, fields
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # the same parser, from PyPI (a dependency on 3.10 only)
    import tomli as tomllib

from cr_edge.data.text_csv import DATA_FORMATS
from cr_edge.data.tokenizer import Tokenizer
from cr_edge.dreg import DEFAULT_LAMBDA, POSITIONS
from cr_edge.errors import InputError
from cr_edge.heads import LOSSES
from cr_edge.nets import ACTIVATIONS, ARCHS
from cr_edge.poly import DEFAULT_FORM, FORMS, MAX_DEGREE, MIN_DEGREE
from cr_edge.task_metrics import TASKS

RECIPE_VERSION = 1
LR_SCHEDULES = ("cosine", "constant")
_SECTIONS = ("data", "net", "train")


@dataclass(frozen=True)
class Recipe:
    """What to train and how. Defaults are a small CR MLP that trains in seconds on a CPU."""

    name: str = "custom"
    # data
    data: str = "digits"  # a built-in dataset name or a file (see cr_edge.data.load_source)
    label: str | None = None  # the CSV column holding the labels
    task: str = "classify"  # classify, regress or ordinal (see cr_edge.heads)
    text_column: str | None = None  # a text CSV's text column (header layout)
    data_format: str = "auto"  # CSV layout: auto, header, or yelp (headerless "label","text")
    # text: the tokenizer's hash buckets and ids per text, and the pooled embedding's width
    buckets: int = 1 << 16
    max_len: int = 256
    embed_dim: int = 64
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    train_fraction: float = 1.0  # share of the training split kept (sample-efficiency studies)
    # net
    arch: str = "mlp"
    hidden: tuple[int, ...] = (32,)
    activation: str = "poly"
    degree: int = 3
    shared: bool = False
    poly_form: str = DEFAULT_FORM  # see cr_edge.poly: the form export lowers, or monomial
    # train
    dreg_lambda: float = DEFAULT_LAMBDA  # 0 disables the penalty
    # a conv layer's DREG term: its mean over output positions (one lambda then fits conv and
    # MLP nets alike), or their sum, which on mnist1d Conv1d made the default lambda ~20x a
    # dense layer's and held w32 nets at 0.73 test accuracy, against 0.89 per position
    # (20 epochs, 2 seeds); see cr_edge.dreg.layer_jacobian_sq
    dreg_positions: str = "mean"
    epochs: int = 60
    batch_size: int = 64
    lr: float = 3e-3
    # the learning rate over the epoch budget: cosine (from lr down to 1% of it, see
    # cr_edge.train.loop.scheduled_lr) or constant
    lr_schedule: str = "cosine"
    weight_decay: float = 1e-4
    optimizer: str = "adamw"
    loss: str = "auto"  # the task's default; regress also takes "huber"
    patience: int = 15  # epochs without a better validation score before stopping
    # Stabilisers, chosen on digits, seeds 0-4, mean test accuracy: degree 3 0.970,
    # degree 5 x (32, 32) 0.969, degree 8 0.975. Without clipping and the penalty, degree
    # 5 x (32, 32) stopped in 3 of 5 seeds; see also train._scaled_step.
    clip_grad: float = 5.0  # gradient-norm clipping threshold; 0 disables
    # weight of mean(relu(|z| - fit_range)^2) per polynomial: keeps pre-activations on the
    # interval each polynomial was fitted on, where it is a bounded activation; 0 disables
    range_penalty: float = 10.0
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "hidden", tuple(int(h) for h in self.hidden))
        _choice("arch", self.arch, ARCHS)
        _choice("activation", self.activation, ACTIVATIONS)
        _choice("poly_form", self.poly_form, FORMS)
        _choice("optimizer", self.optimizer, ("adam", "adamw"))
        _choice("lr_schedule", self.lr_schedule, LR_SCHEDULES)
        _choice("dreg_positions", self.dreg_positions, POSITIONS)
        _choice("task", self.task, TASKS)
        _choice("data_format", self.data_format, DATA_FORMATS)
        _within("buckets", self.buckets, 2, 1 << 24)
        _within("max_len", self.max_len, 1, 1 << 16)
        _within("embed_dim", self.embed_dim, 1, 1 << 14)
        _choice("loss", self.loss, ("auto", *LOSSES[self.task]))
        _within("degree", self.degree, MIN_DEGREE, MAX_DEGREE)
        _within("epochs", self.epochs, 1, 100_000)
        _within("batch_size", self.batch_size, 1, 1 << 20)
        _within("patience", self.patience, 1, 100_000)
        if not self.hidden or min(self.hidden) < 1:
            raise InputError(
                f"recipe field 'hidden': widths must be positive, got {list(self.hidden)}"
            )
        if not (
            self.dreg_lambda >= 0
            and self.lr > 0
            and self.weight_decay >= 0
            and self.clip_grad >= 0
            and self.range_penalty >= 0
        ):
            raise InputError(
                "recipe fields 'dreg_lambda', 'weight_decay', 'clip_grad', 'range_penalty' must be "
                ">= 0 and 'lr' > 0"
            )
        if not 0 < self.train_fraction <= 1:
            raise InputError("recipe field 'train_fraction' must lie in (0, 1]")
        if not (0 < self.val_fraction < 0.5 and 0 < self.test_fraction < 0.5):
            raise InputError(
                "recipe fields 'val_fraction' and 'test_fraction' must lie in (0, 0.5)"
            )

    def tokenizer(self) -> Tokenizer:
        """The tokenizer a text source is read with (the recipe's buckets and max_len)."""
        return Tokenizer(buckets=self.buckets, max_len=self.max_len)

    def replace(self, **changes: object) -> Recipe:
        """A copy with the given fields changed; ``None`` values leave a field as it is."""
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})

    def to_json(self) -> dict:
        return {"recipe_version": RECIPE_VERSION, **dataclasses.asdict(self)}

    @classmethod
    def from_json(cls, d: dict) -> Recipe:
        d = {k: v for k, v in d.items() if k != "recipe_version"}
        if "target" in d:  # checkpoints written before the field was named for what it holds
            d["label"] = d.pop("target")
        if "dreg" in d:  # ... and before DREG's lambda had one name everywhere
            d["dreg_lambda"] = d.pop("dreg")
        d.setdefault("poly_form", "monomial")  # checkpoints written before the depressed form
        d.setdefault("lr_schedule", "constant")  # ... and before the learning-rate schedule
        d.setdefault("dreg_positions", "sum")  # ... and before DREG's per-position conv term
        return cls(**d)


def _choice(field: str, value: object, options: tuple[str, ...]) -> None:
    if value not in options:
        raise InputError(f"recipe field {field!r}: {value!r} is not one of {', '.join(options)}")


def _within(field: str, value: int, lo: int, hi: int) -> None:
    if not isinstance(value, int) or not lo <= value <= hi:
        raise InputError(f"recipe field {field!r}: {value!r} must be an integer in {lo}..{hi}")


def zoo_dir() -> Path:
    """The model zoo: shipped inside the wheel, or the repository's ``models/`` in a checkout."""
    here = Path(__file__).resolve().parent
    packaged = here / "models"
    return packaged if packaged.is_dir() else here.parent / "models"


def zoo_names() -> list[str]:
    return sorted(p.stem for p in zoo_dir().glob("*.toml"))


def load_recipe(name_or_path: str) -> Recipe:
    """A recipe by zoo name (``digits-cr``) or from a TOML file path."""
    path = Path(name_or_path)
    if path.suffix != ".toml":
        path = zoo_dir() / f"{name_or_path}.toml"
        if not path.is_file():
            raise InputError(
                f"unknown recipe {name_or_path!r}; known: {', '.join(zoo_names())} "
                "(or give a path to a .toml file)"
            )
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise InputError(f"{path}: recipe file not found") from e
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise InputError(f"{path}: not a readable TOML recipe ({e})") from e
    return _from_toml(doc, path)


def _from_toml(doc: dict, path: Path) -> Recipe:
    known = {f.name for f in fields(Recipe)}
    flat: dict = {"name": path.stem}
    for key, value in doc.items():
        if key in _SECTIONS and isinstance(value, dict):
            items = value.items()
        else:
            items = [(key, value)]
        for k, v in items:
            if k == "target":
                raise InputError(
                    f"{path}: field 'target' is now called 'label' (the CSV column holding the "
                    "labels); rename it"
                )
            if k == "dreg":  # recipes written before DREG's lambda had one name everywhere
                k = "dreg_lambda"
            if k not in known:
                raise InputError(
                    f"{path}: unknown field {k!r}; known fields: {', '.join(sorted(known))}"
                )
            flat[k] = v
    try:
        return Recipe(**flat)
    except InputError as e:
        raise InputError(f"{path}: {e}") from e
    except (TypeError, ValueError) as e:
        raise InputError(f"{path}: {e}") from e
