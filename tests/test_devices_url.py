"""Device URLs and the device registry: parsed strictly, stored in TOML that reads back."""

from __future__ import annotations

from pathlib import Path

import device_fixtures as fx
import pytest

from cr_edge.devices import registry
from cr_edge.devices.registry import Device
from cr_edge.devices.url import parse_url
from cr_edge.errors import InputError

device_home = fx.device_home


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "ssh://pi@raspberrypi.local:2222/~/cr",
            dict(user="pi", host="raspberrypi.local", port=2222, workdir="cr"),
        ),
        ("ssh://box", dict(user=None, host="box", port=None, workdir=None)),
        ("ssh://[::1]:22/srv/a%20b", dict(host="::1", port=22, workdir="/srv/a b")),
        ("ssh://u@10.0.0.7/opt/w/", dict(user="u", host="10.0.0.7", workdir="/opt/w")),
    ],
)
def test_ssh_urls(text: str, expected: dict) -> None:
    url = parse_url(text)
    assert url.kind == "ssh"
    for key, value in expected.items():
        assert getattr(url, key) == value


def test_exec_prefix_is_split_like_a_shell_but_never_run_by_one() -> None:
    url = parse_url("""exec:docker exec -w '/a b' "box 1" """)
    assert url.prefix == ("docker", "exec", "-w", "/a b", "box 1")


def test_emulated_urls() -> None:
    assert parse_url("emulated:arm64").cpu == "cortex-a72"
    assert parse_url("emulated:arm64/neoverse-n1").cpu == "neoverse-n1"


@pytest.mark.parametrize(
    "text",
    [
        "ssh://-oProxyCommand=touch%20x",  # an option to ssh, not a host
        "ssh://-oProxyCommand=x/",
        "ssh://host?x=1",
        "ssh://u:password@host",
        "ssh://host:99999",
        "ssh://ho st",
        "ssh://$(id)",
        "ssh://-l@host",
        "ssh:host",
        "ssh://host/~",
        "exec:",
        "exec:'unterminated",
        "emulated:x86",
        "emulated:arm64/Bad CPU",
        "ftp://host",
        "host",
        "ssh://host\n",
        "",
    ],
)
def test_bad_urls_are_one_line_errors(text: str) -> None:
    with pytest.raises(InputError) as e:
        parse_url(text)
    assert "\n" not in str(e.value)


def test_registry_round_trip_of_awkward_strings(device_home: Path) -> None:
    awkward = 'C:\\py "3"\t\u00e9 $(x) ; `y`'
    device = Device(
        "pi-4_b",
        "exec:chroot '/srv/a b'",
        python=awkward,
        workdir="/w/'q'\\",
        ssh_options=("ServerAliveInterval=5", 'ProxyJump="a b"'),
        timeout=2.5,
    )
    path = registry.add(device)
    assert path == device_home / "cr-edge" / "devices.toml"
    assert registry.load()["pi-4_b"] == device
    assert registry.tomllib.loads(path.read_text())["pi-4_b"]["python"] == awkward  # plain TOML
    assert sorted(p.name for p in path.parent.iterdir()) == ["devices.toml", "devices.toml.lock"]


def test_default_config_folder(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert registry.config_path() == tmp_path / ".config" / "cr-edge" / "devices.toml"


def test_add_list_remove_through_the_cli(cli_run, device_home: Path) -> None:
    assert cli_run("device", "add", "pi", "ssh://pi@raspberrypi.local").exit_code == 0
    again = cli_run("device", "add", "pi", "exec:env")
    assert again.exit_code == 2 and "--force" in again.output
    assert cli_run("device", "add", "pi", "exec:env", "--force").exit_code == 0
    listed = cli_run("device", "list")
    assert listed.exit_code == 0 and "pi  exec:env" in listed.output
    assert cli_run("device", "remove", "pi").exit_code == 0
    gone = cli_run("device", "remove", "pi")
    assert gone.exit_code == 2 and "no device named 'pi'" in gone.output
    bad = cli_run("device", "add", "pi", "ssh://-oProxyCommand=x")
    assert bad.exit_code == 2 and len(bad.output.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ('[pi]\nurl = "exec:env"\npyhton = "x"\n', "unknown key 'pyhton'"),
        ('[pi]\nurl = "exec:env"\ntimeout = "soon"\n', "timeout"),
        ("[pi]\nurl = 3\n", "no url"),
        ("[pi\n", "not valid TOML"),
        ('[pi]\nurl = "ssh://-oProxyCommand=x"\n', "not a host"),
        ('["bad name"]\nurl = "exec:env"\n', "device name"),
    ],
)
def test_a_damaged_registry_is_named(device_home: Path, text: str, words: str) -> None:
    path = registry.config_path()
    path.parent.mkdir(parents=True)
    path.write_text(text)
    with pytest.raises(InputError) as e:
        registry.load()
    assert words in str(e.value) and "\n" not in str(e.value)


def test_unknown_device_names_the_known_ones(device_home: Path) -> None:
    registry.add(Device("a", "exec:env"))
    with pytest.raises(InputError, match=r"known: a\)"):
        registry.get("b")
