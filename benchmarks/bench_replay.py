"""Frames per second of the replay camera (hardware_configs/replay.cfg) through mda.run.

Run from the repository root:

    python benchmarks/bench_replay.py                  # 512x512 and 2048x2048
    python benchmarks/bench_replay.py --sizes 512 --repeats 5

For each size a 16-bit (T, Y, X) stack of Poisson frames (offset 100, mean
about 20 electrons) is written uncompressed to a temporary folder, so the hub
memory-maps it, and replayed with ``Clock=Step`` (one recorded frame per
snap) through pymmcore-plus's ``core.mda.run`` (a ``useq.MDASequence`` of T
time points, interval 0, no writer). Two rows per size:

* ``recorded power``: laser at RecordedPower_mW, the frame is copied as is;
* ``half power``: laser at half of it, every frame is thinned (binomial
  draws, fresh read noise).

frames/s = T / wall time of ``core.mda.run``; every run counts ``frameReady``
and fails if a frame is missing. The median of the repeats is reported.
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import tifffile
import useq

from scopeloop.sim import load_core

CONFIG = Path(__file__).resolve().parents[1] / "hardware_configs" / "replay.cfg"
FRAMES = {512: 100, 2048: 20}
RECORDED_MW = 10.0


def make_stack(folder: Path, size: int, frames: int) -> Path:
    """A (frames, size, size) uint16 stack of Poisson frames, uncompressed."""
    rng = np.random.default_rng(0)
    path = folder / f"stack_{size}.tif"
    with tifffile.TiffWriter(path) as tif:
        for _ in range(frames):
            tif.write(
                (100 + rng.poisson(20.0, (size, size))).astype(np.uint16),
                contiguous=True,
            )
    return path


def run_once(stack: Path, frames: int, power_mw: float) -> float:
    """Frames per second of one mda.run over the whole stack."""
    core = load_core(CONFIG)
    core.setProperty("ReplayHub", "Recording", str(stack))
    core.setProperty("ReplayHub", "Clock", "Step")
    core.setProperty("Laser", "PowerSetpoint_mW", power_mw)
    got = [0]

    def count(*_: object) -> None:
        got[0] += 1

    core.mda.events.frameReady.connect(count)
    sequence = useq.MDASequence(time_plan={"interval": 0, "loops": frames})
    start = time.perf_counter()
    core.mda.run(sequence)
    wall = time.perf_counter() - start
    del core
    gc.collect()
    if got[0] != frames:
        raise SystemExit(f"{got[0]} of {frames} frames arrived")
    return frames / wall


def main() -> None:
    """Measure and print a Markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 2048])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    logging.getLogger("pymmcore-plus").setLevel(logging.CRITICAL)
    print(f"cores: {os.cpu_count()}, repeats: {args.repeats}")
    print("| size | frames | recorded power fps | half power fps |")
    print("|------|--------|--------------------|----------------|")
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            frames = FRAMES.get(size, 20)
            stack = make_stack(Path(tmp), size, frames)
            rows: dict[float, list[float]] = {RECORDED_MW: [], RECORDED_MW / 2: []}
            for _ in range(args.repeats):  # interleaved: drift hits both rows
                for power in rows:
                    rows[power].append(run_once(stack, frames, power))
            full, half = (statistics.median(v) for v in rows.values())
            print(f"| {size}x{size} | {frames} | {full:.0f} | {half:.1f} |")
            stack.unlink()


if __name__ == "__main__":
    main()
