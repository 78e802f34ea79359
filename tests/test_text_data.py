"""Text CSVs: the header and Yelp layouts read into the same ids, the planted ordinal signal
is learnable, and each bad input is one line naming the file and line, exit 2."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from review_corpus import review_texts, write_review_corpus

from cr_edge.cli import cli
from cr_edge.data import load_source
from cr_edge.data.tokenizer import Tokenizer

TOK = Tokenizer(buckets=512, max_len=32)


def test_header_and_yelp_layouts_give_the_same_ids_and_labels(tmp_path):
    header = write_review_corpus(tmp_path / "h.csv", 40, seed=3)
    yelp = write_review_corpus(tmp_path / "y.csv", 40, seed=3, layout="yelp")
    a = load_source(str(header), "label", "ordinal", "text", tokenizer=TOK)
    b = load_source(str(yelp), tokenizer=TOK)  # detected: no header, "label","text"
    c = load_source(str(yelp), data_format="yelp", tokenizer=TOK)
    texts, stars = review_texts(40, seed=3)
    assert a.x.dtype == np.int32 and a.x.shape == (40, 32)
    np.testing.assert_array_equal(a.x, b.x)
    np.testing.assert_array_equal(b.x, c.x)
    np.testing.assert_array_equal(a.x, TOK.encode(texts))
    np.testing.assert_array_equal(b.y, stars - 1)
    assert b.label_names == ["1", "2", "3", "4", "5"]


def test_yelp_escaped_newlines_and_quotes(tmp_path):
    path = tmp_path / "y.csv"
    path.write_text('"5","Great\\nfood, ""really"" great"\n"1","awful"\n', encoding="utf-8")
    raw = load_source(str(path), tokenizer=TOK)
    assert raw.x[0, :4].tolist() == TOK.encode(['great food "really" great'])[0, :4].tolist()
    assert raw.y.tolist() == [4, 0]


def test_yelp_train_csv_takes_the_published_test_csv_beside_it(tmp_path):
    write_review_corpus(tmp_path / "train.csv", 60, seed=4, layout="yelp")
    write_review_corpus(tmp_path / "test.csv", 20, seed=5, layout="yelp")
    raw = load_source(str(tmp_path / "train.csv"), tokenizer=TOK)
    assert raw.test is not None and raw.test[0].shape == (20, 32)
    np.testing.assert_array_equal(raw.test[1], review_texts(20, seed=5)[1] - 1)
    assert any("published test split" in n for n in raw.notes)


BAD = [
    ("label,text\n3,good\n4,  \n", ["--text-column", "text"], "x.csv:3: empty text"),
    ('"3","good"\n"6","bad"\n', [], "x.csv:2: label '6' is outside 1..5"),
    ('"3","good"\n"4","ok","more"\n', [], "x.csv:2: 3 fields, but the file is in Yelp's layout"),
    ('"3","good"\nlabel,text\n', [], "x.csv:2: label 'label' is not a star rating"),
    ("label,text\n3,good\n4,ok,more\n", ["--text-column", "text"], "x.csv:3: 3 fields but the"),
    ("label,text\n3,good\n", ["--text-column", "body"], "x.csv:1: --text-column 'body' is not"),
]


@pytest.mark.parametrize(("content", "args", "message"), BAD)
def test_bad_text_input_is_one_line_naming_file_and_line(tmp_path, content, args, message):
    path = tmp_path / "x.csv"
    path.write_text(content, encoding="utf-8")
    out = tmp_path / "ck"
    result = CliRunner().invoke(cli, ["train", "--data", str(path), *args, "--out", str(out)])
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.output.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in result.output
    assert not out.exists() or not (out / "config.json").exists()


def test_train_on_the_review_corpus_learns_the_planted_signal(tmp_path):
    data = write_review_corpus(tmp_path / "reviews.csv", 600, seed=0)
    recipe = tmp_path / "r.toml"
    recipe.write_text("buckets = 1024\nmax_len = 48\nembed_dim = 16\nhidden = [16]\n")
    out = tmp_path / "ck"
    args = ["--data", str(data), "--text-column", "text", "--label", "label", "--out", str(out)]
    result = CliRunner().invoke(
        cli, ["train", "--recipe", str(recipe), *args, "--task", "ordinal", "--epochs", "20"]
    )
    assert result.exit_code == 0, result.output
    config = json.loads((out / "config.json").read_text())
    assert config["net"]["arch"] == "text" and config["net"]["vocab"] == 1025
    assert Tokenizer.from_json(config["tokenizer"]) == Tokenizer(buckets=1024, max_len=48)
    metrics = json.loads((out / "metrics.json").read_text())
    # 5 balanced classes: the middle class for all scores MAE 1.2 and QWK 0
    assert metrics["test_mae"] < 0.8 and metrics["test_qwk"] > 0.6


def test_the_yelp_recipe_trains_as_its_readme_entry_says(tmp_path):
    """``cr-edge train --recipe yelp-full-cr --data path/train.csv``, on a Yelp-shaped stand-in."""
    write_review_corpus(tmp_path / "train.csv", 300, seed=6, layout="yelp")
    write_review_corpus(tmp_path / "test.csv", 50, seed=7, layout="yelp")
    out = tmp_path / "ck"
    args = ["--recipe", "yelp-full-cr", "--data", str(tmp_path / "train.csv"), "--epochs", "1"]
    result = CliRunner().invoke(cli, ["train", *args, "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "published test split" in result.output
    config = json.loads((out / "config.json").read_text())
    assert config["net"]["task"] == "ordinal" and config["net"]["vocab"] == 65537
    assert len(np.load(out / "calib.npz")["y_test"]) == 50  # Yelp's test.csv, not a split


def test_fairfight_refuses_text_data_in_one_line(tmp_path):
    data = write_review_corpus(tmp_path / "y.csv", 20, seed=8, layout="yelp")
    result = CliRunner().invoke(
        cli, ["fairfight", "--data", str(data), "--out", str(tmp_path / "f")]
    )
    assert result.exit_code == 2 and "does not take text data yet" in result.output


def test_split_in_place_gives_the_copying_split_without_a_second_copy(tmp_path):
    from cr_edge.data import split

    for layout, name in (("header", "r.csv"), ("yelp", "train.csv")):
        data = write_review_corpus(tmp_path / name, 200, seed=9, layout=layout)
        if layout == "yelp":
            write_review_corpus(tmp_path / "test.csv", 30, seed=10, layout="yelp")
        args = ("label", "ordinal", "text") if layout == "header" else (None, "ordinal")
        copied = split(load_source(str(data), *args, tokenizer=TOK), 3)
        raw = load_source(str(data), *args, tokenizer=TOK)
        viewed = split(raw, 3, in_place=True)
        for part in ("train", "val", "test"):
            np.testing.assert_array_equal(
                getattr(copied, f"x_{part}"), getattr(viewed, f"x_{part}")
            )
            np.testing.assert_array_equal(
                getattr(copied, f"y_{part}"), getattr(viewed, f"y_{part}")
            )
        assert np.shares_memory(viewed.x_train, raw.x) and np.shares_memory(viewed.x_val, raw.x)
