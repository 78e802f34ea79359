"""CR networks and their standard twins, from one builder.

A fair fight between a ChainzRule net and a baseline changes only the
activation (and the width): ``NetConfig.activation`` picks ``poly``, ``relu`` or
``gelu`` and everything else is built the same way. A net is a flat list of
blocks (Linear/Conv1d/Conv2d, activation, pooling, flatten) so that DREG, the export
lowering and the parameter count can all walk it without special cases. ``conv`` builds
Conv2d on images (channels, h, w) and Conv1d on sequences (channels, length). ``text``
starts with the masked mean of token embeddings (``MeanEmbedding``), then an MLP.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cr_edge import dreg
from cr_edge.heads import OrdinalThresholds
from cr_edge.poly import DEFAULT_DEGREE, DEFAULT_FORM, FORMS, PolyAct, check_degree
from cr_edge.task_metrics import TASKS

ACTIVATIONS = ("poly", "relu", "gelu")
ARCHS = ("mlp", "conv", "text")
CONV_RANKS = (2, 3)  # a sample (channels, length) gets Conv1d, (channels, h, w) Conv2d
# (conv, pool, taps): a 1-D signal needs the wider kernel (on MNIST-1D, two 5-tap stages of 16
# channels reach ~92% in 15 epochs, 3-tap ones ~90% with 10x the spread over seeds); an
# 8x8 image keeps 3x3
_CONV = {2: (nn.Conv1d, nn.AvgPool1d, 5), 3: (nn.Conv2d, nn.AvgPool2d, 3)}


@dataclass(frozen=True)
class NetConfig:
    """Architecture of a net; stored in every checkpoint and export."""

    arch: str = "mlp"
    input_shape: tuple[int, ...] = (64,)  # per sample: (features,), (channels, length) or (c, h, w)
    n_classes: int = 10
    hidden: tuple[int, ...] = (32,)  # MLP widths, or conv channels per stage
    activation: str = "poly"
    degree: int = DEFAULT_DEGREE
    shared: bool = False  # one polynomial per layer instead of one per channel
    fit_range: float = 3.0  # polynomial initialised as a fit to GELU on [-fit_range, fit_range]
    init: str = "gelu"
    task: str = "classify"  # what the head means (see cr_edge.heads)
    vocab: int = 0  # text: rows of the embedding table (hash buckets + the padding row 0)
    embed_dim: int = 0  # text: width of the pooled embedding the CR layers see
    poly_form: str = DEFAULT_FORM  # cr_edge.poly.FORMS
    dreg_positions: str = "sum"  # cr_edge.dreg.POSITIONS: a conv layer's DREG term per position?

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {self.task!r}")
        if self.task != "regress" and self.n_classes < 2:
            raise ValueError(f"a {self.task} head needs at least 2 classes, got {self.n_classes}")
        if self.arch not in ARCHS:
            raise ValueError(f"arch must be one of {ARCHS}, got {self.arch!r}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, got {self.activation!r}")
        check_degree(self.degree)
        if self.poly_form not in FORMS:
            raise ValueError(f"poly_form must be one of {FORMS}, got {self.poly_form!r}")
        if self.dreg_positions not in dreg.POSITIONS:
            raise ValueError(
                f"dreg_positions must be one of {dreg.POSITIONS}, got {self.dreg_positions!r}"
            )
        if not self.hidden or min(self.hidden) < 1:
            raise ValueError(f"hidden widths must be positive integers, got {list(self.hidden)}")
        if self.arch == "conv" and len(self.input_shape) not in CONV_RANKS:
            raise ValueError(
                "conv nets need inputs shaped (channels, length) or (channels, h, w), "
                f"got {self.input_shape}"
            )
        if self.arch == "text" and (self.vocab < 2 or self.embed_dim < 1):
            raise ValueError(
                f"text nets need vocab >= 2 and embed_dim >= 1, got {self.vocab}, {self.embed_dim}"
            )
        object.__setattr__(self, "input_shape", tuple(int(d) for d in self.input_shape))
        object.__setattr__(self, "hidden", tuple(int(d) for d in self.hidden))

    @property
    def n_outputs(self) -> int:
        """Width of the last linear layer: K logits, one value, or one shared ordinal score."""
        return self.n_classes if self.task == "classify" else 1

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> NetConfig:
        # checkpoints written before the depressed form trained the monomial one
        d = {"poly_form": "monomial", **d}
        d = {"dreg_positions": "sum", **d}  # ... and before DREG's per-position conv term
        return cls(**{**d, "input_shape": tuple(d["input_shape"]), "hidden": tuple(d["hidden"])})


class ClosedFormAct(nn.Module):
    """ReLU or GELU with its derivative in closed form, so DREG treats baselines alike."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(x) if self.kind == "relu" else F.gelu(x)

    def forward_with_derivative(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if self.kind == "relu":
            return F.relu(x), dreg.relu_derivative(x)
        return F.gelu(x), dreg.gelu_derivative(x)

    def extra_repr(self) -> str:
        return self.kind


class MeanEmbedding(nn.Module):
    """Token ids ``(batch, max_len)`` -> the mean of their embeddings, padding (id 0) left out.

    Written out rather than ``nn.EmbeddingBag`` so that training computes what the export
    emits (Gather, then a masked mean); a text of padding only pools to zeros.
    """

    def __init__(self, vocab: int, dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(vocab, dim) * dim**-0.5)

    def forward(self, ids: Tensor) -> Tensor:
        mask = (ids != 0).to(self.weight.dtype).unsqueeze(-1)
        summed = (F.embedding(ids, self.weight) * mask).sum(dim=1)
        return summed / mask.sum(dim=1).clamp(min=1.0)


class CRNet(nn.Module):
    """A flat stack of blocks; ``forward_with_jacobians`` also returns DREG's per-layer terms."""

    def __init__(self, config: NetConfig) -> None:
        super().__init__()
        self.config = config
        self.blocks = nn.ModuleList(_blocks(config))

    def forward(self, x: Tensor) -> Tensor:
        for block in self.blocks:
            x = block(x)
        return x

    def forward_with_jacobians(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        """Logits and, per activated layer, the per-sample ``||J||_F^2`` (see ``cr_edge.dreg``)."""
        logits, terms, _ = self.forward_with_terms(x)
        return logits, terms

    def forward_with_terms(self, x: Tensor) -> tuple[Tensor, list[Tensor], list[Tensor]]:
        """As ``forward_with_jacobians``, plus each polynomial's excursion outside its fit range.

        The excursion of a PolyAct input ``z`` is ``mean(relu(|z| - fit_range)^2)``: zero while
        every pre-activation stays on the interval the polynomial was fitted on, growing as
        inputs leave it (where a polynomial, unlike the activation it replaced, blows up).
        """
        terms, excess = [], []
        prev = None
        for block in self.blocks:
            if is_activation(block):
                if isinstance(block, PolyAct):
                    excess.append(F.relu(x.abs() - self.config.fit_range).square().mean())
                x, deriv = block.forward_with_derivative(x)
                terms.append(dreg.layer_jacobian_sq(deriv, prev, self.config.dreg_positions))
            else:
                x = block(x)
            prev = block
        return x, terms, excess

    def n_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def is_activation(block: nn.Module) -> bool:
    return isinstance(block, (PolyAct, ClosedFormAct))


def _activation(config: NetConfig, channels: int) -> nn.Module:
    if config.activation == "poly":
        return PolyAct(
            channels, config.degree, config.shared, config.init, config.fit_range, config.poly_form
        )
    return ClosedFormAct(config.activation)


def _blocks(config: NetConfig) -> list[nn.Module]:
    blocks: list[nn.Module] = []
    if config.arch == "text":  # the pooled embedding, then the MLP
        blocks.append(MeanEmbedding(config.vocab, config.embed_dim))
    if config.arch in ("mlp", "text"):
        width = config.embed_dim if config.arch == "text" else math.prod(config.input_shape)
        if config.arch == "mlp" and len(config.input_shape) > 1:
            blocks.append(nn.Flatten())
        for h in config.hidden:
            blocks += [nn.Linear(width, h), _activation(config, h)]
            width = h
        blocks.append(nn.Linear(width, config.n_outputs))
        return blocks + _head(config)
    conv, pool, taps = _CONV[len(config.input_shape)]
    channels, *size = config.input_shape
    for c in config.hidden:
        # "same" padding: a stage keeps the map's size, the pool halves it
        blocks += [conv(channels, c, kernel_size=taps, padding=taps // 2), _activation(config, c)]
        channels = c
        if min(size) >= 4:  # pool while the map is large enough to keep 2 (or 2x2) positions
            blocks.append(pool(2))
            size = [d // 2 for d in size]
    blocks += [nn.Flatten(), nn.Linear(channels * math.prod(size), config.n_outputs)]
    return blocks + _head(config)


def _head(config: NetConfig) -> list[nn.Module]:
    return [OrdinalThresholds(config.n_classes)] if config.task == "ordinal" else []


def build_net(config: NetConfig, seed: int | None = None) -> CRNet:
    """A freshly initialised net; with ``seed`` the initial weights are reproducible."""
    if seed is None:
        return CRNet(config)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return CRNet(config)
