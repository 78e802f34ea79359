"""Checkpoints: a folder of safetensors weights and JSON, never a pickle.

Layout (ARCHITECTURE.md): ``config.json`` (architecture, recipe, normalisation,
labels, versions), ``model.safetensors``, ``metrics.json``, ``calib.npz``. Every
file is written atomically, ``config.json`` last, so a folder whose config
exists holds a complete checkpoint.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from cr_edge import __version__
from cr_edge.artifacts import atomic
from cr_edge.artifacts.manifest import require_complete, write_manifest
from cr_edge.artifacts.npz import read_npz
from cr_edge.data import Normalisation, TargetScale
from cr_edge.data.tokenizer import Tokenizer
from cr_edge.errors import InputError, NonFiniteError
from cr_edge.nets import CRNet, NetConfig, build_net
from cr_edge.recipe import Recipe

FORMAT = "cr-edge-checkpoint"
FORMAT_VERSION = 1
CONFIG, WEIGHTS, METRICS, CALIB = "config.json", "model.safetensors", "metrics.json", "calib.npz"
_PICKLE_SUFFIXES = (".pt", ".pth", ".pkl", ".pickle", ".bin", ".ckpt")


@dataclass(frozen=True)
class Checkpoint:
    """A loaded checkpoint: the net in eval mode and what is needed to use it on raw inputs."""

    net: CRNet
    net_config: NetConfig
    recipe: Recipe
    normalisation: Normalisation | None  # None for text (token ids are not standardised)
    label_names: list[str]
    metrics: dict
    path: Path
    target_scale: TargetScale | None = None  # regression only
    tokenizer: Tokenizer | None = None  # text only

    @property
    def task(self) -> str:
        return self.net_config.task

    def calib(self) -> dict[str, np.ndarray]:
        """The checkpoint's calibration/test arrays (raw, un-normalised inputs)."""
        return read_npz(self.path / CALIB)


def save_checkpoint(
    out: Path,
    net: CRNet,
    recipe: Recipe,
    normalisation: Normalisation | None,
    label_names: list[str],
    metrics: dict,
    calib: dict[str, np.ndarray],
    target_scale: TargetScale | None = None,
    tokenizer: Tokenizer | None = None,
) -> Path:
    """Write a checkpoint folder; refuses non-finite weights so no unusable artifact is left."""
    out = Path(out)
    state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    for name, tensor in state.items():
        if not torch.isfinite(tensor).all():
            raise NonFiniteError(f"weight {name!r} is not finite; the checkpoint was not written")
    config = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "cr_edge_version": __version__,
        "torch_version": torch.__version__.split("+")[0],
        "net": net.config.to_json(),
        "recipe": recipe.to_json(),
        "normalisation": normalisation.to_json() if normalisation is not None else None,
        "label_names": list(label_names),
    }
    if target_scale is not None:
        config["target_normalisation"] = target_scale.to_json()
    if tokenizer is not None:
        config["tokenizer"] = tokenizer.to_json()
    atomic.write_bytes(out / WEIGHTS, save_safetensors(state, metadata={"format": FORMAT}))
    atomic.write_npz(out / CALIB, **calib)
    atomic.write_json(out / METRICS, metrics)
    atomic.write_json(out / CONFIG, config)
    write_manifest(out, [WEIGHTS, CALIB, METRICS, CONFIG])
    return out


def load_checkpoint(path: Path) -> Checkpoint:
    """Load and check a checkpoint folder; every problem is an ``InputError`` naming the file."""
    path = Path(path)
    if path.is_file():
        if path.suffix in _PICKLE_SUFFIXES:
            raise InputError(
                f"{path}: pickle checkpoints are never loaded (they can run code); "
                f"give a cr-edge checkpoint folder with {WEIGHTS}"
            )
        raise InputError(f"{path}: a checkpoint is a folder (config.json + {WEIGHTS}), not a file")
    if not path.is_dir():
        raise InputError(f"{path}: checkpoint folder not found")
    require_complete(path)
    config = _read_config(path / CONFIG)
    try:
        net_config = NetConfig.from_json(config["net"])
        recipe = Recipe.from_json(config["recipe"])
        text = net_config.arch == "text"
        normalisation = None if text else Normalisation.from_json(config["normalisation"])
        tokenizer = Tokenizer.from_json(config["tokenizer"]) if text else None
        label_names = [str(n) for n in config["label_names"]]
        scale = config.get("target_normalisation")
        target_scale = TargetScale.from_json(scale) if scale is not None else None
        if net_config.task == "regress" and target_scale is None:
            raise KeyError("target_normalisation")
        net = build_net(net_config)  # a field only the builder checks (e.g. poly init) is input too
    except KeyError as e:
        raise InputError(
            f"{path / CONFIG}: missing field {e.args[0]!r}; re-run cr-edge train"
        ) from e
    except (TypeError, ValueError) as e:
        raise InputError(f"{path / CONFIG}: invalid field ({e}); re-run cr-edge train") from e
    _load_weights(net, path / WEIGHTS)
    net.eval()
    metrics_path = path / METRICS
    metrics = _read_json(metrics_path) if metrics_path.is_file() else {}
    return Checkpoint(
        net, net_config, recipe, normalisation, label_names, metrics, path, target_scale, tokenizer
    )


def _read_json(path: Path) -> dict:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise InputError(f"{path}: missing; is this a cr-edge checkpoint folder?") from e
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(f"{path}: not valid JSON ({e}); the checkpoint is damaged") from e
    if not isinstance(doc, dict):
        raise InputError(f"{path}: expected a JSON object")
    return doc


def _read_config(path: Path) -> dict:
    config = _read_json(path)
    if config.get("format") != FORMAT:
        raise InputError(f"{path}: field 'format' is {config.get('format')!r}, not {FORMAT!r}")
    version = config.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise InputError(
            f"{path}: checkpoint format_version {version!r} is newer than this cr-edge "
            f"({__version__}) reads (<= {FORMAT_VERSION}); upgrade cr-edge"
        )
    return config


def _load_weights(net: CRNet, path: Path) -> None:
    try:
        state = load_safetensors(path.read_bytes())
    except FileNotFoundError as e:
        raise InputError(f"{path}: missing; the checkpoint is incomplete") from e
    except (OSError, SafetensorError, ValueError, RuntimeError) as e:
        raise InputError(f"{path}: corrupt safetensors file ({e})") from e
    expected = net.state_dict()
    for name, ref in expected.items():
        if name not in state:
            raise InputError(f"{path}: tensor {name!r} is missing; the checkpoint is damaged")
        if tuple(state[name].shape) != tuple(ref.shape):
            raise InputError(
                f"{path}: tensor {name!r} has shape {tuple(state[name].shape)}, "
                f"config.json implies {tuple(ref.shape)}"
            )
        if not torch.isfinite(state[name]).all():
            raise NonFiniteError(f"{path}: tensor {name!r} holds NaN or Inf")
    extra = sorted(set(state) - set(expected))
    if extra:
        raise InputError(f"{path}: unexpected tensor {extra[0]!r}; config.json does not match")
    net.load_state_dict({k: state[k].to(expected[k].dtype) for k in expected})
