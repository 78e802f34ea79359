"""``cr-edge device``: name a device once, then address it by name (``--on NAME``)."""

from __future__ import annotations

from pathlib import Path

import click

from cr_edge.cli.group import cli


@cli.group()
def device() -> None:
    """Devices that validate and profile run on: ssh://, exec: or emulated:arm64."""


@device.command("add")
@click.argument("name")
@click.argument("url")
@click.option("--python", help="The device's Python [default: the venv device setup makes].")
@click.option("--workdir", help="Folder on the device [default: from the URL, else ~/.cr-edge].")
@click.option(
    "--ssh-config",
    type=click.Path(path_type=Path, exists=True, dir_okay=False),
    help="An ssh_config file (ssh -F) for this device.",
)
@click.option("--ssh-option", "ssh_options", multiple=True, help="ssh -o Key=Value; repeatable.")
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True, max=3600),
    default=15.0,
    show_default=True,
    help="Seconds to connect and for each short step.",
)
@click.option(
    "--keep-warm",
    type=click.FloatRange(min=0, max=86400),
    default=600.0,
    show_default=True,
    help="Seconds a server on the device keeps cr-edge imported after a command (0: none).",
)
@click.option("--force", is_flag=True, help="Replace a device of the same name.")
def add(
    name: str,
    url: str,
    python: str | None,
    workdir: str | None,
    ssh_config: Path | None,
    ssh_options: tuple[str, ...],
    timeout: float,
    keep_warm: float,
    force: bool,
) -> None:
    """Name a device: ssh://[user@]host[:port][/workdir], exec:PREFIX or emulated:arm64[/CPU]."""
    from cr_edge.devices import registry

    config = str(ssh_config.resolve()) if ssh_config else None
    entry = registry.Device(
        name, url, python, workdir, config, tuple(ssh_options), timeout, keep_warm
    )
    path = registry.add(entry, force)
    click.echo(f"device {name}: {url} (in {path})")


@device.command("list")
def list_devices() -> None:
    """The devices added so far."""
    from cr_edge.devices import registry

    devices = registry.load()
    if not devices:
        click.echo(f"no devices yet ({registry.config_path()}); add one with cr-edge device add")
    for d in devices.values():
        python = f"  python={d.python}" if d.python else ""
        click.echo(f"{d.name}  {d.url}{python}")


@device.command("remove")
@click.argument("name")
def remove(name: str) -> None:
    """Forget a device (nothing on the device is touched)."""
    from cr_edge.devices import registry

    registry.remove(name)
    click.echo(f"device {name} removed")


@device.command("check")
@click.argument("name")
@click.option("--json", "json_out", type=click.Path(path_type=Path), help="Write it as JSON.")
def check(name: str, json_out: Path | None) -> None:
    """What the device is: arch, CPU and ISA features, OS, Python, onnxruntime, free disk."""
    from cr_edge.artifacts.atomic import write_json
    from cr_edge.devices import registry
    from cr_edge.devices.setup import check_device

    info = check_device(registry.get(name))
    for key, value in info.items():
        shown = " ".join(value) if isinstance(value, list) else value
        click.echo(f"{key:14} {shown}")
    if json_out is not None:
        write_json(json_out, info)


@device.command("clean")
@click.argument("name")
@click.option(
    "--unused-for",
    "days",
    type=click.FloatRange(min=0),
    default=0.0,
    show_default=True,
    help="Keep the files a run used within this many days (0: remove every pushed file).",
)
def clean(name: str, days: float) -> None:
    """Remove the files pushed to a device (they are pushed again when a run needs them)."""
    from cr_edge.devices import registry
    from cr_edge.devices.clean import clean_device

    click.echo(clean_device(registry.get(name), days))


@device.command("setup")
@click.argument("name")
@click.option("--force", is_flag=True, help="Reinstall even if the device is up to date.")
def setup(name: str, force: bool) -> None:
    """Install cr-edge's runtime-only core (no torch) in a venv on the device, from the host."""
    from cr_edge.devices import registry
    from cr_edge.devices.setup import setup_device

    click.echo(setup_device(registry.get(name), force))
