"""Speed of the worker's pipeline: frames/s and per-frame latency.

Run from the repository root:

    python benchmarks/bench_worker.py                      # 512x512 on the CPU
    python benchmarks/bench_worker.py --size 2048 --device cuda --rate 10

Frames are simulated 16-bit camera frames of a realistic culture (demo
settings) at one stage position, so the tracker and the mitosis window work
as in a run. Rows, measured side by side in the same process, repeats
interleaved:

* ``pipeline, batch B``: `Pipeline.process` on B frames at a time (denoise ->
  labels -> mitosis -> tracks), the shipped models, for each B in ``--batches``;
  latency = time from the call to its return (all frames of a batch share it).
* ``classical baseline``: the same frames through a Gaussian filter, a
  threshold at mean + 2 sd and connected-component labelling (scipy): the
  cheapest pipeline that still labels nuclei, as a yardstick for the ratio.

With ``--rate R`` the pipeline is also fed frames one by one at R frames/s
(paced on the clock, as a microscope would), and the latency of each frame
from its arrival to its result is reported (p50/p99): the figure that matters
for reacting to a division.

Goals: >= 10 fps at 512x512 on a 2-core CPU; on a GPU >= 100 fps at
2048x2048 and p99 latency <= 50 ms at 10 fps input.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

import numpy as np
import torch
from scipy import ndimage

from scopeloop import __version__
from scopeloop.models._data import simulate_clip
from scopeloop.sim import CultureParams, SensorModel
from scopeloop.worker import FrameInput, Pipeline


def frames_for(size: int, count: int, seed: int = 0) -> np.ndarray:
    """`count` simulated uint16 frames of `size` x `size`, 3 min apart."""
    params = CultureParams(seed=seed, cycle_h=6.0)
    clip = simulate_clip(
        params,
        SensorModel(),
        shape=(size, size),
        frames=count,
        interval_s=180.0,
        start_s=3600.0,
        laser_power_mw=1.0,
        exposure_ms=50.0,
    )
    return clip.noisy.astype(np.uint16)


def classical(frames: np.ndarray) -> None:
    """Gaussian filter, threshold, connected components."""
    for frame in frames:
        smooth = ndimage.gaussian_filter(frame.astype(np.float32), 1.5)
        ndimage.label(smooth > smooth.mean() + 2 * smooth.std())


def sync(device: str) -> None:
    """Wait for the GPU, so that timings include its work."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def run_batches(pipeline: Pipeline, frames: np.ndarray, batch: int) -> list[float]:
    """Per-call latencies (s) of the whole stack, `batch` frames per call."""
    pipeline.reset()
    latencies = []
    for start in range(0, len(frames), batch):
        chunk = [
            FrameInput(0, t, frames[t], t)
            for t in range(start, min(start + batch, len(frames)))
        ]
        t0 = time.perf_counter()
        pipeline.process(chunk)
        sync(pipeline.device)
        latencies.append(time.perf_counter() - t0)
    return latencies


def run_paced(pipeline: Pipeline, frames: np.ndarray, rate: float) -> list[float]:
    """Latency (s) of each frame fed at `rate` frames/s, from arrival to result."""
    pipeline.reset()
    period = 1.0 / rate
    origin = time.perf_counter()
    latencies = []
    for t, frame in enumerate(frames):
        arrival = origin + t * period
        now = time.perf_counter()
        if now < arrival:
            time.sleep(arrival - now)
        pipeline.process([FrameInput(0, t, frame, t)])
        sync(pipeline.device)
        latencies.append(time.perf_counter() - arrival)
    return latencies


def pct(values: list[float], q: float) -> float:
    """The q-th percentile of `values`."""
    return float(np.percentile(values, q))


def main() -> int:
    """Measure and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--frames", type=int, default=24, help="per repeat")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batches", default="1,4", help="comma-separated sizes")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--rate", type=float, default=0.0, help="paced input fps")
    parser.add_argument(
        "--threads",
        type=int,
        default=max(1, (os.cpu_count() or 2) // 2),
        help="torch CPU threads (default: half the cores, as `scopeloop worker`)",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    batches = [int(b) for b in args.batches.split(",")]

    started = time.perf_counter()
    print(
        f"bench_worker: machine {platform.machine()}, cpus {os.cpu_count()}, "
        f"torch threads {torch.get_num_threads()}, python "
        f"{platform.python_version()}, torch {torch.__version__}, "
        f"scopeloop {__version__}"
    )
    frames = frames_for(args.size, args.frames)
    pipeline = Pipeline.load(device=args.device)
    print(
        f"device {pipeline.device}; models "
        + ", ".join(f"{k} {v[:12]}" for k, v in pipeline.models.items())
    )
    pipeline.warm_up((args.size, args.size), rounds=3)
    fps: dict[str, list[float]] = {f"pipeline, batch {b}": [] for b in batches}
    fps["classical baseline"] = []
    latency: dict[str, list[float]] = {k: [] for k in fps}
    stages: dict[str, list[float]] = {}
    for _ in range(args.repeats):
        for b in batches:
            name = f"pipeline, batch {b}"
            lat = run_batches(pipeline, frames, b)
            fps[name].append(len(frames) / sum(lat))
            latency[name] += lat
        t0 = time.perf_counter()
        classical(frames)
        elapsed = time.perf_counter() - t0
        fps["classical baseline"].append(len(frames) / elapsed)
        latency["classical baseline"].append(elapsed / len(frames))
    pipeline.reset()
    for t in range(min(8, len(frames))):
        (out,) = pipeline.process([FrameInput(0, t, frames[t], t)])
        for key, value in out.timings_ms.items():
            stages.setdefault(key, []).append(value)
    nuclei = len(out.nuclei)

    size = f"{args.size}x{args.size}"
    print(
        f"\n{size} uint16, {args.frames} frames x {args.repeats} repeats, "
        f"{nuclei} nuclei/frame"
    )
    header = (
        f"{'row':<22}{'fps med':>9}{'min':>8}{'max':>8}"
        f"{'lat p50 ms':>12}{'p99 ms':>9}{'/baseline':>11}"
    )
    print(header)
    print("-" * len(header))
    base = statistics.median(fps["classical baseline"])
    for name, values in fps.items():
        med = statistics.median(values)
        print(
            f"{name:<22}{med:>9.1f}{min(values):>8.1f}{max(values):>8.1f}"
            f"{pct(latency[name], 50) * 1000:>12.1f}"
            f"{pct(latency[name], 99) * 1000:>9.1f}"
            f"{med / base:>11.3f}"
        )
    print(
        "stage ms/frame (batch 1, median of 8): "
        + ", ".join(f"{k} {statistics.median(v):.1f}" for k, v in stages.items())
    )
    best = max(statistics.median(v) for k, v in fps.items() if k.startswith("pipeline"))
    if args.device == "cpu" and args.size == 512:
        verdict = "MET" if best >= 10 else "MISSED"
        print(f"Goal: >= 10 fps at 512x512 on the CPU: {best:.1f} fps -> {verdict}")
    if args.rate > 0:
        paced = run_paced(pipeline, frames, args.rate)
        print(
            f"paced at {args.rate:g} fps: latency p50 {pct(paced, 50) * 1000:.1f} ms, "
            f"p99 {pct(paced, 99) * 1000:.1f} ms, max {max(paced) * 1000:.1f} ms"
        )
    print(f"\ntotal {time.perf_counter() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
