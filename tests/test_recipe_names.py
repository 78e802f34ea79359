"""DREG's lambda has one name, ``dreg_lambda``, and recipes written with the old one load."""

from __future__ import annotations

from pathlib import Path

from cr_edge.recipe import Recipe, load_recipe


def test_a_toml_recipe_with_the_old_name_loads(tmp_path: Path):
    path = tmp_path / "old.toml"
    path.write_text('data = "digits"\ndreg = 0.25\n')
    assert load_recipe(str(path)).dreg_lambda == 0.25


def test_a_checkpoint_recipe_with_the_old_name_loads():
    old = {k: v for k, v in Recipe().to_json().items() if k != "dreg_lambda"}
    assert Recipe.from_json({**old, "dreg": 0.5}).dreg_lambda == 0.5


def test_the_zoo_uses_the_one_name():
    for path in (Path(__file__).parents[1] / "models").glob("*.toml"):
        assert "\ndreg =" not in path.read_text(), path.name
