"""A fight's local workers end with their driver, however the driver ends: a SIGKILLed
``cr-edge fairfight`` must not leave processes training for nobody."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

DRIVER = """
import time
from cr_edge.fairfight.engine import local_pool

pool = local_pool(2)
for f in [pool.submit(time.sleep, 0.2) for _ in range(2)]:
    f.result()
print(*sorted(pool._processes), flush=True)
pool.submit(time.sleep, 600)
time.sleep(600)
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is gone for our purpose: it holds no core
    with open(f"/proc/{pid}/stat") as f:
        return f.read().split(") ", 1)[1][0] != "Z"


def test_workers_exit_when_the_driver_is_killed():
    driver = subprocess.Popen([sys.executable, "-c", DRIVER], stdout=subprocess.PIPE, text=True)
    try:
        workers = [int(p) for p in driver.stdout.readline().split()]
        assert len(workers) == 2 and all(_alive(p) for p in workers)
        driver.send_signal(signal.SIGKILL)
        driver.wait(timeout=10)
        deadline = time.monotonic() + 15
        while any(_alive(p) for p in workers) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not any(_alive(p) for p in workers)
    finally:
        driver.kill()
