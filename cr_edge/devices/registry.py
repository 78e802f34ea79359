"""The devices a user named once (``cr-edge device add``), kept in a small TOML file.

``$XDG_CONFIG_HOME/cr-edge/devices.toml`` (``~/.config`` when the variable is unset),
one table per device::

    [pi]
    url = "ssh://pi@raspberrypi.local/~/cr-edge"
    python = "/usr/bin/python3"      # optional: default is the venv ``device setup`` makes

Read with ``tomllib``; written by hand (the table is flat: strings, numbers, lists of
strings), atomically, under a lock, so a crash never leaves half a file and two
``device add`` calls do not lose each other's entry. Unknown keys are refused, naming
the file and the key: a misspelt ``pyhton`` must not silently fall back to a default.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, fields
from pathlib import Path

from filelock import FileLock

from cr_edge.artifacts.atomic import write_text
from cr_edge.devices.url import DeviceUrl, parse_url
from cr_edge.errors import InputError

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_-]{0,63}$")
DEFAULT_TIMEOUT = 15.0  # seconds to connect and for each short step; a run waits longer
# seconds the device's warm server (``warm.py``) stays up after its last command: a user
# runs validate, reads, edits, runs it again within minutes, and expects the second run
# as fast as the first one's imports allow; an idle server costs only its memory
DEFAULT_KEEP_WARM = 600.0


@dataclass(frozen=True)
class Device:
    """A named device: its URL and the few settings a transport needs."""

    name: str
    url: str
    python: str | None = None  # the device's Python; None: the venv made by ``device setup``
    workdir: str | None = None  # overrides the URL's (an exec device has no place for one)
    ssh_config: str | None = None  # an ssh_config file, passed as ``ssh -F``
    ssh_options: tuple[str, ...] = ()  # extra ``ssh -o Key=Value`` options
    timeout: float = DEFAULT_TIMEOUT
    keep_warm: float = DEFAULT_KEEP_WARM  # seconds; 0: every command starts cold

    def __post_init__(self) -> None:
        if not NAME.match(self.name):
            raise InputError(
                f"device name {self.name!r}: use letters, digits, '_' and '-' (at most 64)"
            )
        parse_url(self.url)
        for option in self.ssh_options:
            if "=" not in option or option.startswith("-") or "\n" in option:
                raise InputError(f"device {self.name}: ssh option {option!r} is not Key=Value")
        if not (isinstance(self.timeout, (int, float)) and math.isfinite(self.timeout)) or not (
            0 < self.timeout <= 3600
        ):
            raise InputError(f"device {self.name}: timeout {self.timeout!r} is not 0-3600 s")
        warm = self.keep_warm
        if not (isinstance(warm, (int, float)) and math.isfinite(warm)) or not 0 <= warm <= 86400:
            raise InputError(f"device {self.name}: keep_warm {warm!r} is not 0-86400 s")

    @property
    def parsed(self) -> DeviceUrl:
        return parse_url(self.url)


_KEYS = {f.name for f in fields(Device)} - {"name"}


def config_path() -> Path:
    """``$XDG_CONFIG_HOME/cr-edge/devices.toml``, ``~/.config`` when the variable is unset."""
    base = os.environ.get("XDG_CONFIG_HOME") or ""
    root = Path(base) if os.path.isabs(base) else Path.home() / ".config"
    return root / "cr-edge" / "devices.toml"


def load(path: Path | None = None) -> dict[str, Device]:
    """Every device in the file, by name; an empty dict when there is no file."""
    path = path or config_path()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: cannot read the device list ({e})") from e
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise InputError(f"{path}: not valid TOML ({e}); fix or remove the file") from e
    return {name: _device(path, name, table) for name, table in doc.items()}


def get(name: str, path: Path | None = None) -> Device:
    """The device called ``name``; an ``InputError`` listing the known names otherwise."""
    devices = load(path)
    if name not in devices:
        known = ", ".join(sorted(devices)) or "none yet"
        raise InputError(
            f"no device named {name!r} (known: {known}); add it with cr-edge device add NAME URL"
        )
    return devices[name]


def add(device: Device, force: bool = False, path: Path | None = None) -> Path:
    """Store ``device``; a name already taken is refused unless ``force``."""
    path = path or config_path()
    with _locked(path):
        devices = load(path)
        if device.name in devices and not force:
            raise InputError(
                f"device {device.name!r} exists ({devices[device.name].url}); pass --force to "
                "replace it or remove it first"
            )
        devices[device.name] = device
        _write(path, devices)
    return path


def remove(name: str, path: Path | None = None) -> None:
    """Forget the device called ``name``; an ``InputError`` if there is none."""
    path = path or config_path()
    with _locked(path):
        devices = load(path)
        get(name, path)
        del devices[name]
        _write(path, devices)


def _device(path: Path, name: str, table: object) -> Device:
    if not isinstance(table, dict):
        raise InputError(f'{path}: {name!r} is not a table; write [{name}] and url = "..."')
    unknown = set(table) - _KEYS
    if unknown:
        raise InputError(
            f"{path}: device {name!r} has unknown key {sorted(unknown)[0]!r}; "
            f"known keys: {', '.join(sorted(_KEYS))}"
        )
    if not isinstance(table.get("url"), str):
        raise InputError(f"{path}: device {name!r} has no url string")
    kinds = {
        "python": str,
        "workdir": str,
        "ssh_config": str,
        "timeout": (int, float),
        "keep_warm": (int, float),
    }
    for key, kind in kinds.items():
        if key in table and (not isinstance(table[key], kind) or isinstance(table[key], bool)):
            raise InputError(f"{path}: device {name!r}: {key} has the wrong type")
    options = table.get("ssh_options", [])
    if not isinstance(options, list) or not all(isinstance(o, str) for o in options):
        raise InputError(f"{path}: device {name!r}: ssh_options must be a list of strings")
    try:
        return Device(name=name, **{**table, "ssh_options": tuple(options)})
    except InputError as e:
        raise InputError(f"{path}: {e}") from e


def _write(path: Path, devices: dict[str, Device]) -> None:
    lines = ["# cr-edge devices: written by `cr-edge device add`; one table per device.", ""]
    for name in sorted(devices):
        d = devices[name]
        lines.append(f"[{name}]")
        lines.append(f"url = {_string(d.url)}")
        for key in ("python", "workdir", "ssh_config"):
            if getattr(d, key) is not None:
                lines.append(f"{key} = {_string(getattr(d, key))}")
        if d.ssh_options:
            lines.append(f"ssh_options = [{', '.join(_string(o) for o in d.ssh_options)}]")
        if d.timeout != DEFAULT_TIMEOUT:
            lines.append(f"timeout = {float(d.timeout)!r}")
        if d.keep_warm != DEFAULT_KEEP_WARM:
            lines.append(f"keep_warm = {float(d.keep_warm)!r}")
        lines.append("")
    write_text(path, "\n".join(lines))


def _string(value: str) -> str:
    """A TOML basic string: quotes, backslashes and control characters escaped."""
    out = []
    for c in value:
        if c in '"\\':
            out.append("\\" + c)
        elif ord(c) < 0x20 or ord(c) == 0x7F:
            out.append(f"\\u{ord(c):04x}")
        else:
            out.append(c)
    return '"' + "".join(out) + '"'


def _locked(path: Path) -> FileLock:
    path.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(str(path) + ".lock", timeout=30)
