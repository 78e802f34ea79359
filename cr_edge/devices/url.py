"""Device URLs: where a device is and how to reach it, parsed once and checked before use.

Three forms, one per transport:

* ``ssh://[user@]host[:port][/workdir]``: the user's own OpenSSH client. As in git's
  ssh URLs the path is absolute; ``/~/x`` is ``x`` under the remote home; no path is
  ``.cr-edge`` under the home. The path is percent-decoded (``%20`` for a space).
* ``exec:PREFIX``: any command prefix that runs a command on the device
  (``chroot /srv/arm64``, ``docker exec box``, ``adb -s SERIAL shell``), split like a
  shell would (``shlex``) into an argument vector; nothing is ever run through a shell.
* ``emulated:arm64[/CPU]``: the ARM64 root built by ``cr_edge.devices.emulated``,
  run under qemu's model of ``CPU`` (default ``cortex-a72``).

Host and user names are checked against a conservative alphabet: a host such as
``-oProxyCommand=...`` would be an option to ssh, not a host.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from cr_edge.errors import InputError

SSH, EXEC, EMULATED = "ssh", "exec", "emulated"
DEFAULT_SSH_WORKDIR = ".cr-edge"  # relative: under the remote home
DEFAULT_CPU = "cortex-a72"  # no fp16 arithmetic, no dotprod: the classic Raspberry Pi 4 core
EMULATED_ARCHES = ("arm64",)
_HOST = re.compile(r"^(?:[A-Za-z0-9_][A-Za-z0-9._-]*|\[[0-9A-Fa-f:.]+\])$")
_USER = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._+-]*$")
_CPU = re.compile(r"^[a-z0-9][a-z0-9._-]*$")
FORMS = "ssh://[user@]host[:port][/workdir], exec:PREFIX or emulated:arm64[/CPU]"


@dataclass(frozen=True)
class DeviceUrl:
    """A parsed device URL; ``text`` is what the user wrote, kept for messages and the registry."""

    kind: str  # SSH | EXEC | EMULATED
    text: str
    host: str = ""
    user: str | None = None
    port: int | None = None
    workdir: str | None = None  # None: the transport's default
    prefix: tuple[str, ...] = ()  # exec: the argument vector before the device command
    cpu: str = ""  # emulated: qemu's CPU model


def parse_url(text: str) -> DeviceUrl:
    """Parse ``text``; an ``InputError`` naming the URL and the forms accepted otherwise."""
    if not isinstance(text, str) or not text.strip():
        raise InputError(f"empty device URL; give {FORMS}")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in text):
        raise InputError(f"device URL {text!r}: contains a control character")
    scheme, sep, rest = text.partition(":")
    if not sep:
        raise InputError(f"device URL {text!r}: no scheme; give {FORMS}")
    if scheme == SSH:
        return _ssh(text)
    if scheme == EXEC:
        return _exec(text, rest)
    if scheme == EMULATED:
        return _emulated(text, rest)
    raise InputError(f"device URL {text!r}: unknown scheme {scheme!r}; give {FORMS}")


def _ssh(text: str) -> DeviceUrl:
    if not text.startswith("ssh://"):
        raise InputError(f"device URL {text!r}: write ssh://[user@]host[:port][/workdir]")
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError as e:
        raise InputError(f"device URL {text!r}: {e}") from e
    if parts.query or parts.fragment or parts.password is not None:
        raise InputError(
            f"device URL {text!r}: no password, query or fragment; ssh uses your keys "
            "(give ssh options with --ssh-option)"
        )
    netloc = parts.netloc.rpartition("@")[2]
    host = netloc.rsplit(":", 1)[0] if port is not None else netloc
    if not host or not _HOST.match(host):
        raise InputError(f"device URL {text!r}: {host!r} is not a host name or address")
    user = unquote(parts.username) if parts.username is not None else None
    if user is not None and not _USER.match(user):
        raise InputError(f"device URL {text!r}: {user!r} is not a user name")
    return DeviceUrl(SSH, text, host.strip("[]"), user, port, _ssh_workdir(text, parts.path))


def _ssh_workdir(text: str, path: str) -> str | None:
    if path in ("", "/"):
        return None
    workdir = unquote(path)
    if workdir.startswith("/~/"):
        workdir = workdir[3:]
    elif workdir in ("/~", "/~/"):
        raise InputError(f"device URL {text!r}: the workdir cannot be the home folder itself")
    if "\x00" in workdir or not workdir.strip("/"):
        raise InputError(f"device URL {text!r}: {workdir!r} is not a usable workdir")
    return workdir.rstrip("/") or None


def _exec(text: str, rest: str) -> DeviceUrl:
    try:
        prefix = tuple(shlex.split(rest))
    except ValueError as e:
        raise InputError(f"device URL {text!r}: cannot split the prefix ({e})") from e
    if not prefix:
        raise InputError(
            f"device URL {text!r}: no command prefix; e.g. exec:chroot /srv/arm64 "
            "or exec:docker exec box"
        )
    return DeviceUrl(EXEC, text, prefix=prefix)


def _emulated(text: str, rest: str) -> DeviceUrl:
    arch, _, cpu = rest.partition("/")
    if arch not in EMULATED_ARCHES:
        raise InputError(
            f"device URL {text!r}: emulated {arch!r} is not built in; use emulated:arm64[/CPU]"
        )
    cpu = cpu or DEFAULT_CPU
    if not _CPU.match(cpu):
        raise InputError(
            f"device URL {text!r}: {cpu!r} is not a qemu CPU model such as cortex-a72 or neoverse-n1"
        )
    return DeviceUrl(EMULATED, text, cpu=cpu)
