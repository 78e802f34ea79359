"""The model-metadata schema: round trips, old spellings, and one clear line per bad key."""

from __future__ import annotations

import pytest

from cr_edge.artifacts import metadata
from cr_edge.artifacts.metadata import ModelMetadata
from cr_edge.errors import InputError


def test_typed_fields_round_trip_through_props():
    meta = ModelMetadata(
        schema=1,
        precision="int8",
        policy="w8",
        dequantize_at_load=True,
        degree=3,
        hidden=[16, 16],
        output_step=0.0125,
        kinks={"oracle": "ab", "samples": [1, 4], "of": 8, "rule": "r"},
    )
    props = meta.to_props()
    assert props["cr_edge.degree"] == "3"
    assert props["cr_edge.hidden"] == "[16, 16]"
    assert props["cr_edge.quant.output_step"] == "0.0125"
    assert props["cr_edge.quant.dequantize_at_load"] == "true"
    assert "cr_edge.task" not in props  # unrecorded fields are not written
    assert ModelMetadata.from_props(props) == meta


def test_precision_and_policy_are_two_fields():
    props = metadata.props(precision="int8", policy="a8w7")
    assert props == {"cr_edge.precision": "int8", "cr_edge.policy": "a8w7"}


def test_files_from_before_the_schema_still_read():
    old = {"cr_edge.precision": "int8", "cr_edge.quant.format": "w8", "cr_edge.quant.policy": "{}"}
    meta = metadata.read(old)
    assert (meta.policy, meta.quant_config, meta.schema) == ("w8", {}, None)


def test_keys_that_are_not_ours_are_left_alone():
    assert metadata.read({"author": "me", "cr_edge.task": "classify"}).task == "classify"


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("cr_edge.hidden", "[16,"),
        ("cr_edge.degree", "three"),
        ("cr_edge.quant.output_step", "nan"),
        ("cr_edge.precision", "int4"),
        ("cr_edge.quant.dequantize_at_load", "yes"),
    ],
)
def test_a_bad_value_is_one_line_naming_the_file_and_the_key(key: str, value: str):
    with pytest.raises(InputError) as caught:
        metadata.read({key: value}, "model.onnx")
    message = str(caught.value)
    assert "model.onnx" in message and key in message and "\n" not in message


def test_a_newer_schema_is_refused_with_what_to_do():
    with pytest.raises(InputError, match="upgrade cr-edge"):
        metadata.read({"cr_edge.schema": str(metadata.SCHEMA_VERSION + 1)})
