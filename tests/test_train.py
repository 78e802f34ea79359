"""`cr-edge train` end to end, checkpoints, determinism and the bad inputs of the foundation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from trained import checkpoint

from cr_edge.checkpoint import load_checkpoint
from cr_edge.errors import InputError
from cr_edge.recipe import load_recipe, zoo_names
from cr_edge.train.loop import train

TINY = {"epochs": 3, "hidden": (8,)}


@pytest.fixture(scope="module")
def digits_cr(cli_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("ckpt") / "digits-cr"
    result = cli_run("train", "--recipe", "digits-cr", "--out", out, "--device", "cpu")
    assert result.exit_code == 0, result.output
    return out


@pytest.mark.slow
def test_digits_cr_reaches_95_percent_and_writes_the_checkpoint_layout(digits_cr: Path):
    metrics = json.loads((digits_cr / "metrics.json").read_text())
    assert metrics["test_accuracy"] >= 0.95
    assert {p.name for p in digits_cr.iterdir()} >= {
        "config.json",
        "model.safetensors",
        "metrics.json",
        "calib.npz",
    }
    config = json.loads((digits_cr / "config.json").read_text())
    assert config["net"]["activation"] == "poly" and config["recipe"]["name"] == "digits-cr"


def test_reloaded_checkpoint_gives_identical_outputs(tmp_path: Path):
    recipe = load_recipe("digits-cr").replace(**TINY)
    result = train(recipe, tmp_path / "ck")
    ckpt = load_checkpoint(tmp_path / "ck")
    x = torch.from_numpy(ckpt.normalisation.apply(ckpt.calib()["x"]))
    with torch.no_grad():
        assert torch.equal(result.net.eval()(x), ckpt.net(x))


def test_same_seed_gives_bit_identical_checkpoint(tmp_path: Path):
    recipe = load_recipe("breast-cancer-cr").replace(**TINY)
    train(recipe, tmp_path / "a")
    train(recipe, tmp_path / "b")
    for name in ("model.safetensors", "config.json", "metrics.json", "calib.npz"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name


def test_the_old_recipe_field_target_is_refused_with_its_new_name(tmp_path: Path):
    recipe = tmp_path / "old.toml"
    recipe.write_text('[data]\ndata = "my.csv"\ntarget = "species"\n')
    with pytest.raises(InputError, match="'target' is now called 'label'"):
        load_recipe(str(recipe))


def test_every_zoo_recipe_loads():
    assert {"digits-cr", "digits-relu", "digits-gelu", "breast-cancer-cr"} <= set(zoo_names())
    for name in zoo_names():
        assert load_recipe(name).name == name


def test_cli_options_override_the_recipe(cli_run, tmp_path: Path):
    out = tmp_path / "ck"
    result = cli_run(
        "train",
        "--data",
        "wine",
        "--hidden",
        "6,5",
        "--degree",
        "2",
        "--epochs",
        "2",
        "--seed",
        "3",
        "--out",
        out,
    )
    assert result.exit_code == 0, result.output
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["net"]["hidden"] == [6, 5] and cfg["net"]["degree"] == 2
    assert cfg["recipe"]["seed"] == 3 and cfg["label_names"]


def _csv(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


BAD_INPUTS = [
    (["--data", "missing.csv", "--label", "y"], "missing.csv"),
    (["--recipe", "no-such-recipe"], "unknown recipe"),
    (["--data", "{csv_no_target}", "--label", "label"], "label"),
    (["--data", "{csv_text}", "--label", "label"], "csv_text.csv:3"),
    (["--data", "{csv_nan}", "--label", "label"], "csv_nan.csv:2"),
    (["--data", "{csv_empty}", "--label", "label"], "csv_empty.csv"),
    (["--recipe", "digits-cr", "--degree", "9"], "degree"),
    (["--recipe", "digits-cr", "--hidden", "a,b"], "--hidden"),
    ([], "--recipe"),
]


@pytest.mark.parametrize(("args", "needle"), BAD_INPUTS)
def test_bad_input_gives_one_line_and_exit_2(cli_run, tmp_path: Path, args: list[str], needle: str):
    files = {
        "csv_no_target": _csv(tmp_path / "csv_no_target.csv", "a,b\n1,2\n3,4\n"),
        "csv_text": _csv(tmp_path / "csv_text.csv", "a,label\n1,0\nhello,1\n"),
        "csv_nan": _csv(tmp_path / "csv_nan.csv", "a,label\nnan,0\n2,1\n"),
        "csv_empty": _csv(tmp_path / "csv_empty.csv", "a,label\n"),
    }
    args = [a.format(**files) if a.startswith("{") else a for a in args]
    out = tmp_path / "out"
    result = cli_run("train", *args, "--out", out)
    assert result.exit_code == 2, result.output
    assert needle in result.output
    assert "Traceback" not in result.output
    assert not out.exists() or not any(out.iterdir()), "nothing may be half-written"


@pytest.fixture(scope="module")
def short_digits(trained_root: Path) -> Path:
    """digits-cr trained for two epochs (shared with the export tests): for the file checks."""
    return checkpoint(trained_root, "digits-cr")


def test_existing_checkpoint_is_not_overwritten_without_force(cli_run, short_digits: Path):
    result = cli_run("train", "--recipe", "digits-cr", "--out", short_digits)
    assert result.exit_code == 2 and "--force" in result.output


def _copy(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


def test_corrupt_checkpoint_is_refused_with_the_file_named(
    cli_run, short_digits: Path, tmp_path: Path
):
    broken = _copy(short_digits, tmp_path / "broken")
    data = bytearray((broken / "model.safetensors").read_bytes())
    (broken / "model.safetensors").write_bytes(bytes(data[: len(data) // 2]))
    with pytest.raises(InputError, match=r"model\.safetensors"):
        load_checkpoint(broken)
    result = cli_run("export", broken, "--out", tmp_path / "exp")
    assert result.exit_code == 2 and "model.safetensors" in result.output


def test_missing_tensor_and_pickle_files_are_refused(short_digits: Path, tmp_path: Path):
    from safetensors.numpy import load_file, save_file

    broken = _copy(short_digits, tmp_path / "missing")
    tensors = load_file(str(broken / "model.safetensors"))
    tensors.pop(sorted(tensors)[0])
    save_file(tensors, str(broken / "model.safetensors"))
    with pytest.raises(InputError, match="is missing"):
        load_checkpoint(broken)
    pickle = tmp_path / "model.pt"
    pickle.write_bytes(b"\x80\x04not really")
    with pytest.raises(InputError, match="pickle"):
        load_checkpoint(pickle)


def test_calib_arrays_are_raw_inputs_with_a_test_split(short_digits: Path):
    calib = load_checkpoint(short_digits).calib()
    assert calib["x"].dtype == np.float32 and calib["x"].shape[1:] == (1, 8, 8)
    assert calib["x"].min() >= 0.0, "calibration inputs are raw pixels, not normalised"
    assert len(calib["x_test"]) == len(calib["y_test"]) > 0
