"""Frames per second of scopeloop's simulated camera, against a fill-only camera.

Run from the repository root:

    python benchmarks/bench_camera.py                 # 512x512 and 2048x2048
    python benchmarks/bench_camera.py --sizes 512 --frames 500 --repeats 7

For each sensor size, four rows are measured side by side in the same process,
repeats interleaved so that drift hits every row alike:

* ``SimCamera  mda.run``: scopeloop's ``SimCamera`` on ``hardware_configs/demo.cfg``
  (loaded with ``scopeloop.sim.load_core``), through pymmcore-plus's
  ``core.mda.run`` with a ``useq.MDASequence`` of N time points, interval 0 (the
  engine merges them into one sequence acquisition), no writer.
* ``baseline   mda.run``: a minimal pure-Python ``SimpleCameraDevice`` defined
  here (16-bit, same shape, ``snap`` only fills the buffer with one value) in a
  fresh ``UniMMCore``, through the same ``mda.run``.
* ``SimCamera  snapImage``: N calls of ``core.snapImage()`` on the simulated
  rig, without the MDA: the bare rendering cost of the simulated camera.
* ``baseline   snapImage``: the same for the fill-only camera.

The hub's clock is set to ``Manual`` before the world starts, so the culture does
not advance with wall time during the benchmark. Every MDA run counts
``core.mda.events.frameReady`` and fails the benchmark if a frame is missing.

frames/s of an MDA run = N / wall time of ``core.mda.run`` (set-up included);
"steady" = (N - 1) / (time of last frameReady - time of first frameReady).
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import useq
from pymmcore_plus.experimental.unicore import SimpleCameraDevice, UniMMCore

import scopeloop.sim
from scopeloop.versions import package_versions

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

GOAL_FPS = 100.0  # SimCamera through mda.run at 512x512
GOAL_SIZE = 512
DEFAULT_FRAMES = {512: 200, 2048: 30}
HUB = "SimHub"
CAMERA = "Camera"


class FillCamera(SimpleCameraDevice):
    """Baseline camera: 16-bit, fixed shape; a snap only fills the buffer."""

    def __init__(self, shape: tuple[int, int] = (512, 512)) -> None:
        super().__init__()
        self._shape = shape
        self._exposure_ms = 1.0
        self._value = 0

    def get_exposure(self) -> float:
        return self._exposure_ms

    def set_exposure(self, exposure: float) -> None:
        self._exposure_ms = float(exposure)

    def sensor_shape(self) -> tuple[int, int]:
        return self._shape

    def dtype(self) -> Any:
        return np.uint16

    def snap(self, buffer: np.ndarray) -> Mapping[str, Any]:
        self._value = (self._value + 1) & 0xFFFF
        buffer.fill(self._value)
        return {}


# -- cores ------------------------------------------------------------------


def _quiet_unicore() -> UniMMCore:
    # With only Python devices there is no Micro-Manager installation to find;
    # the core's complaint about that is noise.
    logger = logging.getLogger("pymmcore-plus")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        return UniMMCore()
    finally:
        logger.setLevel(level)


def sim_core(size: int, exposure_ms: float | None) -> UniMMCore:
    """demo.cfg with a Manual clock and a size x size sensor."""
    core: UniMMCore = scopeloop.sim.load_core(scopeloop.sim.default_config())
    core.setProperty(HUB, "Clock", "Manual")  # before the world starts
    core.setProperty(CAMERA, "SensorWidth", size)
    core.setProperty(CAMERA, "SensorHeight", size)
    if exposure_ms is not None:
        core.setExposure(exposure_ms)
    return core


def baseline_core(size: int, exposure_ms: float) -> UniMMCore:
    core = _quiet_unicore()
    core.loadPyDevice(CAMERA, FillCamera((size, size)))
    core.initializeAllDevices()
    core.setCameraDevice(CAMERA)
    core.setExposure(exposure_ms)
    return core


# -- measurements -----------------------------------------------------------


@dataclass
class Row:
    name: str
    fps: list[float] = field(default_factory=list)
    steady: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.fps)

    @property
    def median_steady(self) -> float | None:
        return statistics.median(self.steady) if self.steady else None


class FrameCounter:
    """Counts frameReady and remembers when the first and last frames came."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.count = 0
        self.first = 0.0
        self.last = 0.0

    def __call__(self, img: np.ndarray, event: Any, meta: Any) -> None:
        now = time.perf_counter()
        if not self.count:
            self.first = now
        self.last = now
        self.count += 1


def mda_once(core: UniMMCore, n: int, counter: FrameCounter) -> tuple[float, float]:
    """(frames/s over mda.run, steady frames/s between first and last frame)."""
    seq = useq.MDASequence(time_plan={"interval": 0, "loops": n})
    counter.reset()
    gc.collect()
    t0 = time.perf_counter()
    core.mda.run(seq)
    dt = time.perf_counter() - t0
    if counter.count != n:
        raise RuntimeError(f"mda.run delivered {counter.count} frames, expected {n}")
    span = counter.last - counter.first
    steady = (n - 1) / span if n > 1 and span > 0 else float("nan")
    return n / dt, steady


def snap_once(core: UniMMCore, n: int) -> float:
    gc.collect()
    t0 = time.perf_counter()
    for _ in range(n):
        core.snapImage()
    dt = time.perf_counter() - t0
    return n / dt


def bench_size(
    size: int, frames: int, repeats: int, exposure_ms: float | None
) -> dict[str, Any]:
    rows = {
        "sim_mda": Row("SimCamera  mda.run"),
        "base_mda": Row("baseline   mda.run"),
        "sim_snap": Row("SimCamera  snapImage"),
        "base_snap": Row("baseline   snapImage"),
    }
    sim = sim_core(size, exposure_ms)
    base = baseline_core(size, sim.getExposure())
    info: dict[str, Any] = {"exposure_ms": sim.getExposure()}
    counters = {"sim": FrameCounter(), "base": FrameCounter()}
    sim.mda.events.frameReady.connect(counters["sim"])
    base.mda.events.frameReady.connect(counters["base"])
    try:
        # Warm-up: the first snap starts the world and builds the noise lookup
        # table; the first MDA run pays for imports and thread start-up, and a
        # full-length one touches every page of the sequence buffer that the
        # timed runs will use (fresh pages made the first timed run of the
        # fill-only camera 5x slower).
        for warm in (sim, base):
            warm.snapImage()
            assert warm.getImage().shape == (size, size)
        del warm
        img = sim.getImage()
        info["sim_frame_mean_grey"] = round(float(img.mean()), 1)
        info["sim_frame_max_grey"] = int(img.max())
        del img
        mda_once(sim, frames, counters["sim"])
        mda_once(base, frames, counters["base"])
        snap_once(sim, min(frames, 10))
        snap_once(base, min(frames, 10))

        for _ in range(repeats):
            fps, steady = mda_once(sim, frames, counters["sim"])
            rows["sim_mda"].fps.append(fps)
            rows["sim_mda"].steady.append(steady)
            fps, steady = mda_once(base, frames, counters["base"])
            rows["base_mda"].fps.append(fps)
            rows["base_mda"].steady.append(steady)
            rows["sim_snap"].fps.append(snap_once(sim, frames))
            rows["base_snap"].fps.append(snap_once(base, frames))
        info["sim_exposures_recorded"] = len(scopeloop.sim.world_of(sim, HUB).exposures)
    finally:
        sim.mda.events.frameReady.disconnect(counters["sim"])
        base.mda.events.frameReady.disconnect(counters["base"])
        # Release the cores on the main thread: collecting a core on another
        # thread after a sequence acquisition can abort the process.
        del sim, base
        gc.collect()
    return {"rows": rows, "info": info}


# -- report -----------------------------------------------------------------


def _fmt(x: float | None) -> str:
    return "-" if x is None or x != x else f"{x:9.1f}"


def print_table(
    size: int,
    frames: int,
    repeats: int,
    result: dict[str, Any],
    out: Callable[[str], None],
) -> None:
    rows: dict[str, Row] = result["rows"]
    info = result["info"]
    out(
        f"\n{size}x{size} uint16, {frames} frames x {repeats} repeats, "
        f"exposure {info['exposure_ms']:g} ms (no sleep; sets photon counts only), "
        f"sim frame mean/max grey "
        f"{info['sim_frame_mean_grey']}/{info['sim_frame_max_grey']}"
    )
    header = (
        f"{'camera     path':<22}{'median':>9}{'min':>9}{'max':>9}"
        f"{'steady':>9}{'ms/frame':>10}{'sim/base':>10}"
    )
    out(header)
    out("-" * len(header))
    ratio_of = {"sim_mda": "base_mda", "sim_snap": "base_snap"}
    for key, row in rows.items():
        ratio = ""
        if key in ratio_of:
            ratio = f"{row.median / rows[ratio_of[key]].median:10.3f}"
        out(
            f"{row.name:<22}{_fmt(row.median)}{_fmt(min(row.fps))}{_fmt(max(row.fps))}"
            f"{_fmt(row.median_steady) if row.steady else '       -'}"
            f"{1000 / row.median:10.2f}{ratio}"
        )
    out("(frames/s; median/min/max over repeats; steady = first->last frameReady)")
    if size == GOAL_SIZE:
        got = rows["sim_mda"].median
        verdict = "MET" if got >= GOAL_FPS else "MISSED"
        out(
            f"Goal: SimCamera through mda.run >= {GOAL_FPS:g} fps at "
            f"{GOAL_SIZE}x{GOAL_SIZE}: {got:.1f} fps -> {verdict}"
        )


def machine() -> dict[str, str]:
    return {
        "processor": platform.processor() or "(empty)",
        "machine": platform.machine(),
        "cpus": str(os.cpu_count()),
        **package_versions(),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--frames",
        type=int,
        default=None,
        help="frames per run for every size (default: 200 at 512, 30 at 2048, "
        "100 otherwise)",
    )
    p.add_argument(
        "--repeats", type=int, default=5, help="timed runs per row (default 5)"
    )
    p.add_argument(
        "--sizes",
        type=int,
        nargs="+",
        default=[512, 2048],
        help="square sensor sizes in pixels (default: 512 2048)",
    )
    p.add_argument(
        "--exposure-ms",
        type=float,
        default=None,
        help="camera exposure (default: demo.cfg's, 50 ms); no camera sleeps, it "
        "only changes the photon counts of the simulated frames",
    )
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    args = p.parse_args(argv)
    if args.repeats < 1 or (args.frames is not None and args.frames < 2):
        p.error("--repeats must be >= 1 and --frames >= 2")

    def out(line: str = "") -> None:
        print(line, flush=True)

    m = machine()
    out("bench_camera: " + ", ".join(f"{k} {v}" for k, v in m.items()))
    started = time.perf_counter()
    results: dict[str, Any] = {"machine": m, "sizes": {}}
    for size in args.sizes:
        frames = args.frames or DEFAULT_FRAMES.get(size, 100)
        result = bench_size(size, frames, args.repeats, args.exposure_ms)
        print_table(size, frames, args.repeats, result, out)
        results["sizes"][str(size)] = {
            "frames": frames,
            "repeats": args.repeats,
            **result["info"],
            "rows": {
                k: {"name": r.name, "fps": r.fps, "steady": r.steady}
                for k, r in result["rows"].items()
            },
        }
    out(f"\ntotal {time.perf_counter() - started:.1f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
