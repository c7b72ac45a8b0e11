"""Acquisition rate of the controller (run_session), against plain mda.run.

Run from the repository root:

    python benchmarks/bench_acquisition.py                 # 512x512 and 256x256
    python benchmarks/bench_acquisition.py --sizes 512 --frames 300 --repeats 3

For each sensor size, four rows are measured side by side in the same process,
repeats interleaved so that drift hits every row alike. All three acquire N
frames at one position, interval 0, on ``hardware_configs/demo.cfg`` with the
hub clock ``Manual`` and the camera's ``SensorWidth``/``SensorHeight`` set to the
size, exposure 50 ms (no camera sleeps), and write them with the same writer:
pymmcore-plus's ome-writers sink, OME-TIFF, into a temporary folder.

* ``plain mda.run``: ``scopeloop.hardware.load_core`` (the loader run_session
  uses), properties set with ``core.setProperty``, then
  ``core.mda.run(useq.MDASequence(time_plan={"interval": 0, "loops": N}),
  output=<tmp>/plain.ome.tiff)``. With interval 0 the engine merges the
  sequence into one hardware-sequenced (streaming) acquisition.
* ``plain mda.run, event by event``: the same with
  ``engine.use_hardware_sequencing = False``: one snap per event, as the
  controller runs (it must decide each event when the runner asks for it).
* ``run_session, no worker``: ``scopeloop.controller.run_session`` with a plan of
  ``time: {interval_s: 0, frames: N}``, no positions, the same properties as
  plan ``properties`` (SimHub Clock Manual, Camera SensorWidth/SensorHeight),
  ``worker="none"``: the ledger and the raw writer, no stream.
* ``run_session, worker``: the same with the stream on a loopback port and a
  receiver (``FrameClient``, 4 credits) that answers every frame at once with an
  empty ``ResultMessage``. The receiver runs in its own process (default) or in
  a thread of this process (``--receiver thread``). It is started, its hello
  queued, before run_session is called, and connects as soon as the server
  binds; frames acquired before its hello arrives wait in (and are superseded
  from) the keep-newest queue.

The two run_session rows go through the EventSource (a generator of events:
the sink writes an unbounded ``t`` axis), one event at a time; the plain rows
through an ``MDASequence`` of known length. The controller's overhead is the
ratio to ``plain mda.run, event by event``; what streaming acquisition would
add on top is the ratio of the two plain rows.

Timing: signals of the core that acquires (run_session's core is reached by
wrapping ``load_core`` where run_session looks it up; the wrapper only connects
the counters). frames/s = N / (sequenceFinished - sequenceStarted): the MDA
proper, writer closing included, core loading and run-folder bookkeeping
excluded, the same span for every row. "steady" = (N - 1) / (last frameReady -
first frameReady). "call s" = wall time of the whole call (load_core +
mda.run + releasing the core; or run_session), for information. "cpu ms" =
CPU time of the benchmark process (all threads: camera, runner, writer, the
stream's threads, libzmq's) per frame over the same span; "rcv ms" = CPU time
of the receiver process (all threads) per frame, from its start to its stop.
CPU times are less disturbed than frame rates by other load on the machine.

What the receiver does per frame is what any worker must: ``receive`` (poll,
take the two parts, validate the JSON header, view the pixels as an array),
build a ``ResultMessage`` for the frame and ``send_result`` it. It never touches
the pixels: its cost is the protocol's, not an analysis's.

Every run must deliver N ``frameReady`` signals and write N pages to its
OME-TIFF; run_session must report N frames and finish "completed". For the
worker row, the table's footer sums the ledger's stream states over the repeats
(``analysed``, ``skipped``) and counts the frames skipped after the first frame
was sent (frames skipped before that only waited for the receiver to connect).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import gc
import json
import multiprocessing as mp
import os
import platform
import resource
import shutil
import socket
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import tifffile
import useq

import scopeloop.controller._session as session_module
from scopeloop.config import SessionPlan
from scopeloop.controller import run_session
from scopeloop.hardware import default_config, load_core
from scopeloop.protocol import FrameClient, ResultMessage
from scopeloop.versions import package_versions

if TYPE_CHECKING:
    from collections.abc import Callable

    from pymmcore_plus.experimental.unicore import UniMMCore

GOAL_RATIO = 0.95  # run_session (with a worker) / plain mda.run
HUB = "SimHub"
CAMERA = "Camera"
CREDITS = 4
EXPOSURE_MS = 50.0  # demo.cfg's
LASER_MW = 2.0  # demo.cfg's start-up power
TIMEOUT_S = 60.0


# -- the receiver (module level: a spawned process imports it) ----------------


def serve(address: str, stop: threading.Event | Any, counts: dict[str, int]) -> None:
    """Answer every frame at once with an empty result, until `stop` is set."""
    client = FrameClient(address, "bench-receiver", credits=CREDITS)
    try:
        while not stop.is_set():
            got = client.receive(timeout_s=0.05)
            if got is None:
                continue
            frame, _ = got
            client.send_result(
                ResultMessage(
                    frame_index=frame.frame_index,
                    position=frame.position,
                    worker_id=client.worker_id,
                )
            )
            counts["answered"] += 1
    finally:
        client.close()


def cpu_s() -> float:
    """CPU seconds of this process so far, all threads."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def receiver_process(conn: Any) -> None:
    """Serve one address per command received on `conn` until told to quit.

    Answers each stop with (frames answered, CPU seconds of this process while
    serving).
    """
    while True:
        command = conn.recv()
        if command is None:
            return
        stop = threading.Event()
        counts = {"answered": 0}
        c0 = cpu_s()
        thread = threading.Thread(target=serve, args=(command, stop, counts))
        thread.start()
        conn.send("serving")
        conn.recv()  # stop
        stop.set()
        thread.join()
        conn.send((counts["answered"], cpu_s() - c0))


class Receiver:
    """A FrameClient answering frames, in a spawned process or in a thread."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self._process: Any = None
        self._thread: threading.Thread | None = None
        self.cpu_s: float | None = None  # of the process, over the last serving
        if mode == "process":
            ctx = mp.get_context("spawn")
            self._conn, child = ctx.Pipe()
            self._process = ctx.Process(
                target=receiver_process, args=(child,), daemon=True
            )
            self._process.start()

    def start(self, address: str) -> None:
        if self._process is not None:
            self._conn.send(address)
            if not self._conn.poll(TIMEOUT_S):
                raise RuntimeError("the receiver process did not start")
            self._conn.recv()
        else:
            self._stop = threading.Event()
            self._counts = {"answered": 0}
            self._thread = threading.Thread(
                target=serve, args=(address, self._stop, self._counts), daemon=True
            )
            self._thread.start()

    def stop(self) -> int:
        """Stop serving; the number of frames answered."""
        if self._process is not None:
            self._conn.send("stop")
            if not self._conn.poll(TIMEOUT_S):
                raise RuntimeError("the receiver process did not stop")
            answered, self.cpu_s = self._conn.recv()
            return int(answered)
        assert self._thread is not None
        self._stop.set()
        self._thread.join(TIMEOUT_S)
        return self._counts["answered"]

    def close(self) -> None:
        if self._process is not None:
            with contextlib.suppress(OSError):
                self._conn.send(None)
            self._process.join(10)
            if self._process.is_alive():
                self._process.terminate()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- timing -------------------------------------------------------------------


class Timer:
    """Counts frameReady and times sequenceStarted -> sequenceFinished."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.frames = 0
        self.first = self.last = self.started = self.finished = 0.0
        self.cpu_started = self.cpu_finished = 0.0

    def attach(self, core: UniMMCore) -> None:
        core.mda.events.sequenceStarted.connect(self._started)
        core.mda.events.frameReady.connect(self._frame)
        core.mda.events.sequenceFinished.connect(self._finished)

    def _started(self, *_: Any) -> None:
        self.started = time.perf_counter()
        self.cpu_started = cpu_s()

    def _frame(self, *_: Any) -> None:
        now = time.perf_counter()
        if not self.frames:
            self.first = now
        self.last = now
        self.frames += 1

    def _finished(self, *_: Any) -> None:
        self.finished = time.perf_counter()
        self.cpu_finished = cpu_s()

    def rates(self, n: int) -> tuple[float, float]:
        if self.frames != n:
            raise RuntimeError(f"{self.frames} frameReady signals, expected {n}")
        span = self.last - self.first
        return n / (self.finished - self.started), (n - 1) / span

    def cpu_ms(self, n: int) -> float:
        """CPU of this process per frame, sequenceStarted -> sequenceFinished."""
        return (self.cpu_finished - self.cpu_started) * 1000 / n


TIMER = Timer()


def instrumented_load_core(config: Path) -> UniMMCore:
    """run_session's load_core, with the benchmark's counters connected."""
    core = load_core(config)
    TIMER.attach(core)
    return core


def tiff_pages(path: Path) -> int:
    with tifffile.TiffFile(path) as tif:
        return len(tif.pages)


# -- the rows -----------------------------------------------------------------


@dataclass
class Run:
    fps: float
    steady: float
    call_s: float
    cpu_ms: float = 0.0  # controller process, per frame, over the MDA
    states: dict[str, int] = field(default_factory=dict)
    answered: int | None = None
    late_skipped: int = 0
    receiver_cpu_ms: float | None = None  # receiver process, per frame


def plain_once(size: int, n: int, out: Path, *, sequencing: bool = True) -> Run:
    TIMER.reset()
    raw = out / "plain.ome.tiff"
    gc.collect()
    t0 = time.perf_counter()
    core = load_core(default_config())
    core.setProperty(HUB, "Clock", "Manual")  # before the world starts
    core.setProperty(CAMERA, "SensorWidth", size)
    core.setProperty(CAMERA, "SensorHeight", size)
    core.setExposure(EXPOSURE_MS)
    core.mda.engine.use_hardware_sequencing = sequencing  # type: ignore[union-attr]
    TIMER.attach(core)
    core.mda.run(
        useq.MDASequence(time_plan={"interval": 0, "loops": n}), output=str(raw)
    )
    # Release the core on the main thread, as run_session does.
    del core
    gc.collect()
    call_s = time.perf_counter() - t0
    fps, steady = TIMER.rates(n)
    if (pages := tiff_pages(raw)) != n:
        raise RuntimeError(f"plain mda.run wrote {pages} pages, expected {n}")
    return Run(fps, steady, call_s, TIMER.cpu_ms(n))


def make_plan(size: int, n: int, root: Path) -> SessionPlan:
    return SessionPlan.model_validate(
        {
            "name": "bench",
            "illumination": {"exposure_ms": EXPOSURE_MS, "laser_power_mw": LASER_MW},
            "time": {"interval_s": 0, "frames": n},
            "properties": [
                {"device": HUB, "property": "Clock", "value": "Manual"},
                {"device": CAMERA, "property": "SensorWidth", "value": size},
                {"device": CAMERA, "property": "SensorHeight", "value": size},
            ],
            "output": {"root": str(root), "format": "ome-tiff"},
            "stream": {"worker": "none", "drain_s": 5.0},
        }
    )


def session_once(size: int, n: int, out: Path, receiver: Receiver | None = None) -> Run:
    TIMER.reset()
    worker = "none"
    if receiver is not None:
        worker = f"tcp://127.0.0.1:{free_port()}"
        receiver.start(worker)  # connects and says hello once the server binds
    folder = out / "run"
    gc.collect()
    t0 = time.perf_counter()
    try:
        summary = run_session(
            default_config(), make_plan(size, n, out), out=folder, worker=worker
        )
    finally:
        answered = receiver.stop() if receiver is not None else None
    call_s = time.perf_counter() - t0
    fps, steady = TIMER.rates(n)
    if summary.frames != n or summary.finish_reason != "completed":
        raise RuntimeError(f"run_session: {summary}")
    if (pages := tiff_pages(folder / "raw.ome.tiff")) != n:
        raise RuntimeError(f"run_session wrote {pages} pages, expected {n}")
    receiver_cpu = None
    if receiver is not None and receiver.cpu_s is not None:
        receiver_cpu = receiver.cpu_s * 1000 / n
    return Run(
        fps,
        steady,
        call_s,
        TIMER.cpu_ms(n),
        dict(summary.stream_states),
        answered,
        late_skips(folder),
        receiver_cpu,
    )


def late_skips(folder: Path) -> int:
    """Frames skipped after the first frame was sent (frames.csv of the run)."""
    with (folder / "frames.csv").open(newline="") as f:
        states = [row["stream"] for row in csv.DictReader(f)]
    sent = [i for i, s in enumerate(states) if s in ("sent", "analysed", "error")]
    return sum(s == "skipped" for s in states[sent[0] :]) if sent else 0


@dataclass
class Row:
    name: str
    runs: list[Run] = field(default_factory=list)

    def median(self, attr: str = "fps") -> float:
        return statistics.median(getattr(r, attr) for r in self.runs)


def bench_size(
    size: int, frames: int, repeats: int, receiver: Receiver, tmp: Path
) -> dict[str, Row]:
    rows = {
        "plain": Row("plain mda.run"),
        "plain-1by1": Row("plain mda.run, event by event"),
        "none": Row("run_session, no worker"),
        "worker": Row(f"run_session, worker ({receiver.mode})"),
    }
    runs: dict[str, Callable[[int, int, Path], Run]] = {
        "plain": plain_once,
        "plain-1by1": lambda s, n, o: plain_once(s, n, o, sequencing=False),
        "none": session_once,
        "worker": lambda s, n, o: session_once(s, n, o, receiver),
    }

    def once(key: str, n: int) -> Run:
        out = tmp / f"{key}-{size}"
        out.mkdir()
        try:
            return runs[key](size, n, out)
        finally:
            shutil.rmtree(out, ignore_errors=True)

    # Warm-up: imports, the first world and noise table, the first writer.
    for key in rows:
        once(key, min(frames, 20))
    for _ in range(repeats):
        for key, row in rows.items():
            row.runs.append(once(key, frames))
    return rows


# -- report -------------------------------------------------------------------


def print_table(
    size: int, frames: int, repeats: int, rows: dict[str, Row], out: Callable
) -> dict[str, float]:
    out(
        f"\n{size}x{size} uint16, {frames} frames x {repeats} repeats, interval 0, "
        f"1 position, OME-TIFF (ome-writers), exposure {EXPOSURE_MS:g} ms (no sleep)"
    )
    header = (
        f"{'path':<31}{'median':>9}{'min':>9}{'max':>9}{'steady':>9}"
        f"{'ms/frame':>10}{'call s':>8}{'ratio':>8}{'cpu ms':>8}{'rcv ms':>8}"
    )
    out(header)
    out("-" * len(header))
    base = rows["plain"].median()
    ratios = {}
    for key, row in rows.items():
        fps = [r.fps for r in row.runs]
        ratio = row.median() / base
        ratios[key] = ratio
        rcv = [r.receiver_cpu_ms for r in row.runs if r.receiver_cpu_ms is not None]
        rcv_ms = f"{statistics.median(rcv):8.2f}" if rcv else f"{'-':>8}"
        out(
            f"{row.name:<31}{row.median():9.1f}{min(fps):9.1f}{max(fps):9.1f}"
            f"{row.median('steady'):9.1f}{1000 / row.median():10.2f}"
            f"{row.median('call_s'):8.2f}"
            f"{'' if key == 'plain' else f'{ratio:8.3f}':>8}"
            f"{row.median('cpu_ms'):8.2f}"
            f"{rcv_ms}"
        )
    out(
        "(frames/s over sequenceStarted -> sequenceFinished; median/min/max over "
        "repeats; steady = first -> last frameReady; call s = whole call, median; "
        "ratio = median / plain mda.run median; cpu ms = CPU of the benchmark "
        "process per frame over the same span, all threads; rcv ms = CPU of the "
        "receiver process per frame while serving, all threads; medians)"
    )
    streamed = rows["worker"].runs
    states: dict[str, int] = {}
    for r in streamed:
        for k, v in r.states.items():
            states[k] = states.get(k, 0) + v
    answered = sum(r.answered or 0 for r in streamed)
    late = sum(r.late_skipped for r in streamed)
    out(
        f"stream (worker row, all repeats): {answered} frames answered by the "
        f"receiver; ledger states {json.dumps(states, sort_keys=True)}, of the "
        f"skipped {late} after the first frame was sent"
    )
    verdict = "MET" if ratios["worker"] >= GOAL_RATIO else "MISSED"
    one_by_one = ratios["plain-1by1"]
    out(
        f"Goal: run_session with a worker >= {GOAL_RATIO:.0%} of plain mda.run: "
        f"{ratios['worker']:.1%} -> {verdict} (no worker: {ratios['none']:.1%})"
    )
    out(
        "Against plain mda.run event by event (the same acquisition mode): "
        f"worker {ratios['worker'] / one_by_one:.1%}, "
        f"no worker {ratios['none'] / one_by_one:.1%}"
    )
    return ratios


def machine() -> dict[str, str]:
    return {
        "processor": platform.processor() or "(empty)",
        "machine": platform.machine(),
        "cpus": str(os.cpu_count()),
        **package_versions(),
        "tifffile": tifffile.__version__,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--frames", type=int, default=200, help="frames per run (default 200)"
    )
    p.add_argument(
        "--repeats", type=int, default=5, help="timed runs per row (default 5)"
    )
    p.add_argument(
        "--sizes",
        type=int,
        nargs="+",
        default=[512, 256],
        help="square sensor sizes in pixels (default: 512 256)",
    )
    p.add_argument(
        "--receiver",
        choices=("process", "thread"),
        default="process",
        help="where the answering FrameClient runs (default: a spawned process)",
    )
    p.add_argument(
        "--tmp", metavar="DIR", help="parent of the temporary folder (default: system)"
    )
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    args = p.parse_args(argv)
    if args.repeats < 1 or args.frames < 2:
        p.error("--repeats must be >= 1 and --frames >= 2")

    def out(line: str = "") -> None:
        print(line, flush=True)

    m = machine()
    out("bench_acquisition: " + ", ".join(f"{k} {v}" for k, v in m.items()))
    started = time.perf_counter()
    results: dict[str, Any] = {"machine": m, "args": vars(args), "sizes": {}}
    # run_session looks load_core up in its own module: count its frames too.
    session_module.load_core = instrumented_load_core  # type: ignore[attr-defined]
    receiver = Receiver(args.receiver)
    try:
        with tempfile.TemporaryDirectory(prefix="bench_acq_", dir=args.tmp) as tmp:
            for size in args.sizes:
                rows = bench_size(size, args.frames, args.repeats, receiver, Path(tmp))
                ratios = print_table(size, args.frames, args.repeats, rows, out)
                results["sizes"][str(size)] = {
                    "ratios": ratios,
                    "rows": {
                        k: {"name": r.name, "runs": [vars(x) for x in r.runs]}
                        for k, r in rows.items()
                    },
                }
    finally:
        receiver.close()
        session_module.load_core = load_core  # type: ignore[attr-defined]
    out(f"\ntotal {time.perf_counter() - started:.1f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
