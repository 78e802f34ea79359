"""The Python API mirrors the command line: the same options, the same defaults.

A new option on a command that the matching ``cr_edge.api`` function lacks, or a default
that differs between the two, fails here, so a notebook user and a shell user get the
same behaviour from the same words.
"""

from __future__ import annotations

import inspect

import click
import pytest

from cr_edge import api
from cr_edge.cli.group import cli

# CLI parameter -> API parameter, where the API's plural names a list of values
RENAMED = {"runtime": "runtimes", "batch": "batches"}
# what only a terminal has: where to print or draw
CLI_ONLY = {"json_out", "plot"}


def _normalise(value: object) -> object:
    if isinstance(value, tuple) and all(isinstance(v, str) for v in value):
        return ",".join(value)  # a NameList's ("all",) is the API's "all"
    return value


def _cli_defaults(name: str) -> dict[str, object]:
    command = cli.commands[name]
    ctx = click.Context(command)
    defaults = {}
    for param in command.params:
        if param.name in CLI_ONLY or param.name == "help":
            continue
        if isinstance(param, click.Argument):
            defaults[param.name] = inspect.Parameter.empty  # required on both sides
            continue
        value = param.get_default(ctx, call=True)
        if value is not None and type(value).__name__ != "Sentinel":  # click's "unset"
            value = param.type_cast_value(ctx, value)
        else:
            value = None
        defaults[RENAMED.get(param.name, param.name)] = _normalise(value)
    return defaults


@pytest.mark.parametrize("name", ["validate", "profile", "pipeline", "fairfight"])
def test_every_option_of_the_command_is_an_api_parameter_with_its_default(name: str):
    signature = inspect.signature(getattr(api, name)).parameters
    for option, default in _cli_defaults(name).items():
        assert option in signature, f"api.{name} has no parameter for cr-edge {name}'s {option}"
        api_default = signature[option].default
        if default is inspect.Parameter.empty:
            assert api_default is inspect.Parameter.empty, (name, option)
            continue
        assert _normalise(api_default) == default, (name, option, api_default, default)


def test_quantize_options_are_the_config_fields_or_api_parameters():
    from dataclasses import fields

    from cr_edge.quantize.policy import QuantConfig, QuantPolicy

    known = {
        *inspect.signature(api.quantize).parameters,
        *(f.name for f in fields(QuantPolicy)),
        *(f.name for f in fields(QuantConfig)),
    }
    # the command's spellings of config fields: --chain-precision is QuantPolicy.poly,
    # --format's "ort" is QuantConfig.ort_format, the MODEL argument is api's model
    spelled = {"chain_precision": "poly", "formats": "ort_format", "model": "model"}
    for option in _cli_defaults("quantize"):
        assert spelled.get(option, option) in known, f"cr-edge quantize {option}"


def test_the_api_refuses_what_the_command_refuses(tmp_path):
    from cr_edge.errors import InputError

    with pytest.raises(InputError, match="--iters or --seconds"):
        api.profile([tmp_path / "model.onnx"], iters=10, seconds=1.0)
    (tmp_path / "report.json").write_text("{}")
    with pytest.raises(InputError, match="pass --force"):
        api.fairfight("digits", out=tmp_path)
