"""``cr-edge device clean NAME``: free the disk that pushes took on a device.

Every ``--on`` run pushes its files content-addressed (``blobs/<sha256>``, and
``bundles/<id>/`` for a model with external data), and keeps them: the next run of the
same model pushes nothing. Each new export or quantize candidate adds its own, so
they accumulate. They are removed by an explicit command, not by an automatic cap,
because the device's disk is the user's: cr-edge cannot know how much of a phone or a
board the user means to give it, and a cache that evicts silently turns a
one-round-trip run into a multi-minute push over a slow link without saying why. The
command says what it removed and what it freed; ``--unused-for DAYS`` keeps what
recent runs used (each run marks the files it uses), so it is an LRU cut on demand.

It runs as one agent action under the workdir's exclusive lock, so no command is
using what it removes, and it is atomic per item: a blob is one unlink, a bundle is
renamed away before it is deleted, so a later run finds either the whole of it or
none and pushes what it lacks. Killed runs' leftovers (``runs/``, ``tmp/``) go too;
the venv that ``device setup`` made stays.
"""

from __future__ import annotations

from cr_edge.devices.registry import Device
from cr_edge.devices.remote import device_python, open_transport, open_workdir, run_agent
from cr_edge.devices.setup import SYSTEM_PYTHON
from cr_edge.devices.url import EMULATED
from cr_edge.errors import InputError

DAY = 86400.0


def clean_device(device: Device, unused_for_days: float = 0.0) -> str:
    """Remove the pushed files not used in the last ``unused_for_days``; one line saying so."""
    if not unused_for_days >= 0:
        raise InputError(f"--unused-for {unused_for_days!r}: give a number of days, 0 or more")
    transport = open_transport(device)
    open_workdir(transport, [])
    python = (
        device_python(device, transport.workdir)
        if device.python or device.parsed.kind == EMULATED
        else SYSTEM_PYTHON  # the agent needs only the standard library
    )
    spec = {"action": "clean", "lock": "exclusive", "unused_for": unused_for_days * DAY}
    envelope = run_agent(transport, python, spec, device.name)
    removed, freed, kept = (int(envelope.get(k, 0)) for k in ("removed", "freed", "kept"))
    which = f" unused for {unused_for_days:g} days" if unused_for_days else ""
    return (
        f"device {device.name}: removed {removed} pushed file(s){which}, freed "
        f"{freed / 1e6:.1f} MB, kept {kept} in {transport.workdir}"
    )
