"""What ``validate --on`` adds to a local ``validate`` when there is nothing to push.

The device is this machine reached over loopback ssh: a throwaway OpenSSH server on
127.0.0.1 (the test suite's, ``tests/device_fixtures.loopback_sshd``), the device's
Python this one. The model is digits-cr (trained for one epoch and exported, or
``--model PATH``), validated on the ``cpu`` runtime. Three commands, interleaved round
by round (a b c a b c ...), each a fresh ``python -m cr_edge.cli`` as a user runs it:

  a  host:   ``cr-edge validate MODEL --runtime cpu``
  b  warm:   the same with ``--on warm``: a device whose server (``devices/warm.py``)
             keeps cr-edge imported between commands (the default, ``keep_warm`` 600 s)
  c  cold:   the same with ``--on cold``: ``keep_warm`` 0, every command starts a new
             Python on the device, which imports numpy, onnx and onnxruntime again

Both devices are run once before the rounds (the push, and the warm server's start):
the figures are the second-and-later runs the target speaks of. The overhead of a round
is its ``--on`` time minus its host time; the median and the p10-p90 spread over the
rounds are printed, with the load average (the device validates while the host does, so
a busy machine's two cores stretch both). Target: warm median <= 1.5 s.

Needs ``/usr/sbin/sshd`` and ``ssh`` (apt-get install openssh-server openssh-client).
Run from the repository root: ``python -m bench.device_overhead [--rounds N] [--page]``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.pages import add_page_option, load_average, machine, recorded

ROOT = Path(__file__).resolve().parents[1]


def spread(values: list[float]) -> str:
    """median [p10, p90] in seconds."""
    if len(values) < 2:
        return f"{values[0]:+.2f} s"
    deciles = statistics.quantiles(values, n=10, method="inclusive")
    return f"{statistics.median(values):+.2f} s [{deciles[0]:+.2f}, {deciles[-1]:+.2f}]"


def timed(command: list[str], env: dict) -> float:
    start = time.perf_counter()
    proc = subprocess.run(command, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{proc.stdout}{proc.stderr}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="an exported .onnx (default: digits-cr)")
    parser.add_argument("--rounds", type=int, default=10)
    add_page_option(parser, "device_overhead")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT / "tests"))
    import device_fixtures as fx

    if not fx.sshd_available():
        raise SystemExit(
            "needs /usr/sbin/sshd, ssh and ssh-keygen (apt-get install openssh-server)"
        )
    from cr_edge.devices import launch, registry, remote

    with tempfile.TemporaryDirectory(prefix="cr-edge-bench-") as tmp:
        folder = Path(tmp)
        if args.model:
            model = args.model.resolve()
        else:
            from bench.profile_overhead import smallest_zoo_model

            model = smallest_zoo_model(folder)
        env = dict(os.environ, XDG_CONFIG_HOME=str(folder / "config"))
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        os.environ["XDG_CONFIG_HOME"] = env["XDG_CONFIG_HOME"]
        (folder / "sshd").mkdir()
        with fx.loopback_sshd(folder / "sshd") as server:
            warm = registry.DEFAULT_KEEP_WARM  # what a user's device has
            registry.add(server.device("warm", folder / "warm", keep_warm=warm))
            registry.add(server.device("cold", folder / "cold", keep_warm=0))
            base = [sys.executable, "-m", "cr_edge.cli", "validate", str(model), "--runtime", "cpu"]
            report = folder / "report.json"
            sides = {
                "host": base,
                "warm": [*base, "--on", "warm", "--json", str(report)],
                "cold": [*base, "--on", "cold"],
            }
            for name in ("warm", "cold"):  # the push, and the warm server's start
                timed(sides[name], env)
            time.sleep(3)  # the warm server imports in the background after the first run
            print(machine())
            print(load_average("at start"))
            seen: dict[str, list[float]] = {name: [] for name in sides}
            served_warm = 0  # the warm device's runs its server answered (the report says)
            alone: list[float] = []  # the warm device's run by itself, the host idle
            files, paths = launch.layout([model], "validate")
            for _ in range(args.rounds):
                for name, command in sides.items():
                    seen[name].append(timed(command, env))
                served_warm += json.loads(report.read_text())["devices"]["warm"]["warm"]
                start = time.perf_counter()
                remote.run_command(
                    registry.get("warm"), "validate", files, [*paths, "--runtime", "cpu"]
                )
                alone.append(time.perf_counter() - start)
            print(load_average("at end"))
            with contextlib.suppress(OSError, ValueError):  # the warm server: not left behind
                os.kill(int((folder / "warm" / "agent.server.lock").read_text()), signal.SIGTERM)
    print(
        f"digits-cr model.onnx, --runtime cpu, loopback ssh, {args.rounds} interleaved rounds"
        if not args.model
        else f"{model.name}, --runtime cpu, loopback ssh, {args.rounds} interleaved rounds"
    )
    host = seen["host"]
    print(f"host validate          {statistics.median(host):.2f} s (median)")
    for name in ("warm", "cold"):
        added = [on - h for on, h in zip(seen[name], host, strict=True)]
        label = f"validate --on {name}"
        print(f"{label:<22} {statistics.median(seen[name]):.2f} s, adds {spread(added)}")
    print(f"the warm device's server answered {served_warm} of {args.rounds} runs")
    print(
        f"the warm device's run alone (push check, ssh, its validation): "
        f"{statistics.median(alone):.2f} s (median), the host idle meanwhile"
    )
    print("target: --on a set-up device with nothing to push adds at most 1.5 s (warm median)")


if __name__ == "__main__":
    with recorded("device_overhead", "--page" in sys.argv[1:]):
        main()
