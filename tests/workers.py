"""Workers for tests that run a controller: `scopeloop worker` in its own process.

Also the demo rig made quick for such runs (`quick_demo_properties`).
"""

from __future__ import annotations

import subprocess
import sys
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Iterator


@contextmanager
def worker_process(address: str, *extra_args: str) -> Iterator[subprocess.Popen[str]]:
    """`python -m scopeloop worker` on CPU with one thread, serving `address`.

    `extra_args` are more worker options (`"--frames", "3"`). Its stdout and
    stderr together are text on `stdout` (read them with `communicate`); the
    process is killed on leaving the block, whether or not it exited.
    """
    worker = subprocess.Popen(
        [sys.executable, "-m", "scopeloop", "worker", "--address", address,
         "--device", "cpu", "--threads", "1", *extra_args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )  # fmt: skip
    try:
        yield worker
    finally:
        worker.kill()


def quick_demo_properties(sensor_px: int) -> list[dict[str, Any]]:
    """Plan `properties:` for demo.cfg: 600x simulated time, a small square sensor."""
    return [
        {"device": "SimHub", "property": "SpeedUp", "value": 600},
        {"device": "Camera", "property": "SensorWidth", "value": sensor_px},
        {"device": "Camera", "property": "SensorHeight", "value": sensor_px},
    ]
