"""Devices: validate and profile on the machines a model ships to, from the host.

A device is named once (``cr-edge device add NAME URL``) and then addressed by name
(``--on NAME``). torch-free, like the stages it drives. Modules, host side first:

* ``url``: the three URL forms (``ssh://``, ``exec:``, ``emulated:arm64[/CPU]``), parsed.
* ``registry``: the devices, in ``$XDG_CONFIG_HOME/cr-edge/devices.toml``.
* ``transport``: how an argument vector reaches a device (OpenSSH client or a command
  prefix), never through a shell string; pushes that are never half-taken.
* ``remote``: one command on one device: workdir, content-addressed push, run, pull.
* ``reports``: the device's answer, size-capped and schema-checked before it is used.
* ``commands``: ``validate --on`` and ``profile --on``: which files, rows ``RUNTIME@NAME``.
* ``setup``: ``device check`` and ``device setup`` (wheels for the device, a venv there).
* ``view``: fingerprints and device latency tables for the terminal.
* ``emulated``, ``arm64_root``: the built-in emulated ARM64 device (qemu user mode).

Device side, standard library only, sent to the device's Python on stdin:

* ``fingerprint``: arch, CPU, ISA features (HWCAP), OS, Python, onnxruntime, free disk.
* ``agent``: lock the workdir, lay out the files, run ``python -m cr_edge.cli``, answer.
* ``warm``: a server in the workdir that keeps cr-edge imported between commands.
"""
