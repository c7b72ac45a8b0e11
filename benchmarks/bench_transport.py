"""Frame transport throughput of scopeloop's stream, against raw pyzmq.

Run from the repository root:

    python benchmarks/bench_transport.py                 # 512x512 and 2048x2048
    python benchmarks/bench_transport.py --sizes 512 --worker thread

For each frame size (uint16), three rows are measured side by side in the same
process, repeats interleaved so that drift hits every row alike:

* ``scopeloop``: ``FrameServer.submit`` (controller, ROUTER bound on
  ``tcp://127.0.0.1``, its own I/O thread) -> ``FrameClient.receive`` (worker,
  DEALER) -> ``FrameClient.send_result`` with an empty ``ResultMessage`` -> the
  server's listener. The worker grants C credits in its hello; the submitting
  thread keeps at most C frames outstanding (a ``threading.Semaphore`` released
  by the listener's ``result_received``), and positions rotate over more than C
  values, so the keep-newest queue never supersedes a frame. Every frame's
  ``FrameMessage`` header is built at submit time, as the controller does.
* ``raw pyzmq``: the same socket pattern with nothing but pyzmq: a ROUTER bound
  on loopback, a DEALER worker that says hello, each frame sent with
  ``send_multipart([identity, json_header, buffer], copy=False)``, a small JSON
  reply per frame, the same window of C frames in flight, driven by one thread
  (send while the window has room, else block on a reply). The baseline of the
  goal.
* ``raw pyzmq, I/O thread`` (for diagnosis): raw pyzmq arranged like
  ``FrameServer``: the submitting thread queues frames (lock, deque, wake-up
  pipe) and an I/O thread polls and sends; JSON headers, no pydantic. Between
  the two raw rows lies the cost of the hand-off between two threads; between
  this row and scopeloop's, the cost of scopeloop's protocol and bookkeeping.

The worker runs in its own process (``--worker process``, default: the worker
is a separate program in scopeloop) or in a thread of the benchmark process
(``--worker thread``: both ends share one interpreter). Neither worker touches
the pixels; both build a numpy view of the received buffer.

Every run checks that all N frames were sent once and answered once (scopeloop:
no frame skipped or lost, server and listener counts agree; raw: every frame
index came back) and fails otherwise.

frames/s = N / (time of the last reply - time of the first send); the worker's
start and handshake are not timed. MB/s = frames/s x frame bytes / 1e6.
"cpu ctrl" = CPU time of the benchmark process (every thread: submitting
thread, scopeloop's I/O thread, libzmq's I/O thread, pyzmq's garbage collector)
over the same span, per frame; "cpu wrk" = CPU time of the worker process (all
its threads) from its hello to its last reply, per frame (``-`` for a worker
thread, whose time is in "cpu ctrl"). CPU times are less disturbed than wall
times by other load on the machine.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import gc
import json
import multiprocessing as mp
import os
import platform
import resource
import statistics
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import zmq

from scopeloop.protocol import (
    ArraySpec,
    FrameClient,
    FrameMessage,
    FrameServer,
    ResultMessage,
)
from scopeloop.versions import package_versions

if TYPE_CHECKING:
    from collections.abc import Callable

GOAL_RATIO = 0.90  # scopeloop / raw pyzmq frames/s
DEFAULT_FRAMES = {512: 1000, 2048: 100}
LOOPBACK = "tcp://127.0.0.1:0"
TIMEOUT_S = 30.0


# -- workers (module level: a spawned process imports them) ------------------


def cpu_s() -> float:
    """CPU seconds of this process so far, all threads (libzmq's included)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def scopeloop_worker(address: str, credits: int, n: int, report: Any = None) -> None:
    """Answer n frames with empty results, through FrameClient."""
    client = FrameClient(address, "bench-worker", credits=credits)
    c0 = cpu_s()
    try:
        answered = 0
        deadline = time.monotonic() + TIMEOUT_S
        while answered < n and time.monotonic() < deadline:
            got = client.receive(timeout_s=1.0)
            if got is None:
                continue
            frame, image = got
            assert image.shape == frame.buffers[0].shape
            client.send_result(
                ResultMessage(
                    frame_index=frame.frame_index,
                    position=frame.position,
                    worker_id=client.worker_id,
                )
            )
            answered += 1
        if report is not None:
            report.send(cpu_s() - c0)
    finally:
        client.close()


def raw_worker(address: str, credits: int, n: int, report: Any = None) -> None:
    """Answer n frames with a small JSON reply, with nothing but pyzmq."""
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(address)
    sock.send(json.dumps({"kind": "hello", "credits": credits}).encode())
    c0 = cpu_s()
    try:
        for _ in range(n):
            if not sock.poll(int(TIMEOUT_S * 1000)):
                raise TimeoutError("raw worker: no frame")
            head, data = sock.recv_multipart(copy=False)
            h = json.loads(head.bytes)
            image = np.frombuffer(data.buffer, h["dtype"]).reshape(h["shape"])
            assert image.shape == tuple(h["shape"])
            sock.send(
                json.dumps(
                    {
                        "kind": "result",
                        "frame_index": h["frame_index"],
                        "position": h["position"],
                    }
                ).encode()
            )
        if report is not None:
            report.send(cpu_s() - c0)
    finally:
        sock.close(linger=0)


class Worker:
    """A worker function running in a thread or a spawned process.

    A worker process reports the CPU time it spent answering (all its threads);
    a worker thread's CPU time is part of the benchmark process's.
    """

    def __init__(
        self, mode: str, target: Callable[..., None], args: tuple[Any, ...]
    ) -> None:
        self._conn: Any = None
        if mode == "process":
            ctx = mp.get_context("spawn")
            self._conn, child = ctx.Pipe(duplex=False)
            self._job: Any = ctx.Process(
                target=target, args=(*args, child), daemon=True
            )
        else:
            self._job = threading.Thread(target=target, args=args, daemon=True)
        self._job.start()

    def join(self) -> float | None:
        """Wait for the end; the worker process's CPU seconds, if it is one."""
        cpu = None
        if self._conn is not None and self._conn.poll(TIMEOUT_S):
            cpu = float(self._conn.recv())
        self._job.join(TIMEOUT_S)
        if self._job.is_alive():
            raise RuntimeError("worker did not finish")
        if getattr(self._job, "exitcode", 0):
            raise RuntimeError(f"worker exited with {self._job.exitcode}")
        if self._conn is not None and cpu is None:
            raise RuntimeError("the worker process did not report")
        return cpu


@dataclass
class Sample:
    """One timed run."""

    fps: float
    ctrl_cpu_us: float  # per frame, benchmark process (all threads)
    worker_cpu_us: float | None  # per frame, worker process (None: a thread)


def sample(n: int, dt: float, ctrl_cpu: float, worker_cpu: float | None) -> Sample:
    return Sample(
        n / dt,
        ctrl_cpu * 1e6 / n,
        None if worker_cpu is None else worker_cpu * 1e6 / n,
    )


# -- the two controllers ------------------------------------------------------


class Listener:
    """The server's listener: counts, and opens the window on each result."""

    def __init__(self, window: threading.Semaphore, n: int) -> None:
        self.window = window
        self.n = n
        self.sent = 0
        self.skipped = 0
        self.lost = 0
        self.results: list[int] = []
        self.done = threading.Event()
        self.last = 0.0

    def frame_sent(self, frame_index: int, worker_id: str, sent_at: float) -> None:
        self.sent += 1

    def frame_skipped(self, frame_index: int, reason: str) -> None:
        self.skipped += 1

    def frame_lost(self, frame_index: int, reason: str) -> None:
        self.lost += 1

    def result_received(
        self, result: ResultMessage, arrays: list[np.ndarray], received_at: float
    ) -> None:
        self.results.append(result.frame_index)
        self.window.release()
        if len(self.results) == self.n:
            self.last = time.perf_counter()
            self.done.set()


def scopeloop_once(
    image: np.ndarray, n: int, credits: int, positions: int, mode: str
) -> Sample:
    """frames/s through FrameServer -> FrameClient -> results."""
    window = threading.Semaphore(credits)
    listener = Listener(window, n)
    server = FrameServer(LOOPBACK, listener, max_queue=max(16, positions))
    try:
        worker = Worker(mode, scopeloop_worker, (server.bound_address, credits, n))
        deadline = time.monotonic() + TIMEOUT_S
        while server.stats.workers < 1:
            if time.monotonic() > deadline:
                raise RuntimeError("the worker did not say hello")
            time.sleep(0.001)
        spec = ArraySpec.of("image", image)
        gc.collect()
        t0 = time.perf_counter()
        c0 = cpu_s()
        for i in range(n):
            if not window.acquire(timeout=TIMEOUT_S):
                raise RuntimeError(f"no result for {TIMEOUT_S} s after frame {i}")
            server.submit(
                FrameMessage(
                    frame_index=i,
                    position=i % positions,
                    t_index=i // positions,
                    time_s=time.perf_counter() - t0,
                    exposure_ms=10.0,
                    laser_power_mw=1.0,
                    pixel_size_um=0.5,
                    buffers=(spec,),
                ),
                image,
            )
        if not listener.done.wait(TIMEOUT_S):
            raise RuntimeError(f"{len(listener.results)} of {n} results came back")
        dt = listener.last - t0
        ctrl_cpu = cpu_s() - c0
        worker_cpu = worker.join()
    finally:
        server.close()
    stats = server.stats
    if (
        listener.skipped
        or listener.lost
        or sorted(listener.results) != list(range(n))
        or (stats.submitted, stats.sent, stats.results) != (n, n, n)
        or stats.skipped
        or stats.lost
        or stats.rejected
    ):
        raise RuntimeError(
            f"not every frame was delivered once: {stats}, listener sent "
            f"{listener.sent} skipped {listener.skipped} lost {listener.lost} "
            f"results {len(listener.results)}"
        )
    return sample(n, dt, ctrl_cpu, worker_cpu)


def raw_once(
    image: np.ndarray, n: int, credits: int, positions: int, mode: str
) -> Sample:
    """frames/s through a bare pyzmq ROUTER -> DEALER -> reply loop."""
    ctx = zmq.Context.instance()
    router = ctx.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    router.bind(LOOPBACK)
    try:
        address = router.getsockopt_string(zmq.LAST_ENDPOINT)
        worker = Worker(mode, raw_worker, (address, credits, n))
        if not router.poll(int(TIMEOUT_S * 1000)):
            raise RuntimeError("the raw worker did not say hello")
        identity, hello = router.recv_multipart()
        window = json.loads(hello)["credits"]
        payload = memoryview(np.ascontiguousarray(image)).cast("B")
        shape, dtype = list(image.shape), image.dtype.name
        answered: list[int] = []
        sent = 0
        gc.collect()
        t0 = time.perf_counter()
        c0 = cpu_s()
        while len(answered) < n:
            while sent < n and sent - len(answered) < window:
                head = json.dumps(
                    {
                        "kind": "frame",
                        "frame_index": sent,
                        "position": sent % positions,
                        "dtype": dtype,
                        "shape": shape,
                    }
                ).encode()
                router.send_multipart([identity, head, payload], copy=False)
                sent += 1
            if not router.poll(int(TIMEOUT_S * 1000)):
                raise RuntimeError(f"{len(answered)} of {n} replies came back")
            _, reply = router.recv_multipart(copy=False)
            answered.append(json.loads(reply.bytes)["frame_index"])
        dt = time.perf_counter() - t0
        ctrl_cpu = cpu_s() - c0
        worker_cpu = worker.join()
    finally:
        router.close(linger=0)
    if sorted(answered) != list(range(n)):
        raise RuntimeError("raw pyzmq: not every frame was answered once")
    return sample(n, dt, ctrl_cpu, worker_cpu)


def raw_threaded_once(
    image: np.ndarray, n: int, credits: int, positions: int, mode: str
) -> Sample:
    """frames/s of raw pyzmq arranged like FrameServer: submit, then an I/O thread.

    The submitting thread appends frame indices to a deque under a lock and
    writes a byte to a wake-up pipe; an I/O thread polls the ROUTER and the
    pipe, takes replies in (releasing the window) and sends what is pending.
    JSON headers, no pydantic, no listener, no per-worker bookkeeping.
    """
    ctx = zmq.Context.instance()
    router = ctx.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    router.bind(LOOPBACK)
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    window = threading.Semaphore(credits)
    pending: collections.deque[int] = collections.deque()
    lock = threading.Lock()
    done = threading.Event()
    answered: list[int] = []
    last = [0.0]
    try:
        address = router.getsockopt_string(zmq.LAST_ENDPOINT)
        worker = Worker(mode, raw_worker, (address, credits, n))
        if not router.poll(int(TIMEOUT_S * 1000)):
            raise RuntimeError("the raw worker did not say hello")
        identity, _ = router.recv_multipart()
        payload = memoryview(np.ascontiguousarray(image)).cast("B")
        shape, dtype = list(image.shape), image.dtype.name

        def io() -> None:
            poller = zmq.Poller()
            poller.register(router, zmq.POLLIN)
            poller.register(wake_r, zmq.POLLIN)
            while not done.is_set():
                ready = dict(poller.poll(250))
                if wake_r in ready:
                    os.read(wake_r, 4096)
                while router in ready:
                    try:
                        _, reply = router.recv_multipart(zmq.NOBLOCK, copy=False)
                    except zmq.Again:
                        break
                    answered.append(json.loads(reply.bytes)["frame_index"])
                    window.release()
                    if len(answered) == n:
                        last[0] = time.perf_counter()
                        done.set()
                while True:
                    with lock:
                        if not pending:
                            break
                        i = pending.popleft()
                    head = json.dumps(
                        {
                            "kind": "frame",
                            "frame_index": i,
                            "position": i % positions,
                            "dtype": dtype,
                            "shape": shape,
                        }
                    ).encode()
                    router.send_multipart(
                        [identity, head, payload], zmq.NOBLOCK, copy=False
                    )

        thread = threading.Thread(target=io, daemon=True)
        thread.start()
        gc.collect()
        t0 = time.perf_counter()
        c0 = cpu_s()
        for i in range(n):
            if not window.acquire(timeout=TIMEOUT_S):
                raise RuntimeError(f"no reply for {TIMEOUT_S} s after frame {i}")
            with lock:
                pending.append(i)
            with contextlib.suppress(BlockingIOError):
                os.write(wake_w, b"\0")
        if not done.wait(TIMEOUT_S):
            raise RuntimeError(f"{len(answered)} of {n} replies came back")
        dt = last[0] - t0
        ctrl_cpu = cpu_s() - c0
        thread.join()
        worker_cpu = worker.join()
    finally:
        done.set()
        router.close(linger=0)
        os.close(wake_r)
        os.close(wake_w)
    if sorted(answered) != list(range(n)):
        raise RuntimeError("raw pyzmq (I/O thread): not every frame was answered once")
    return sample(n, dt, ctrl_cpu, worker_cpu)


# -- measurement --------------------------------------------------------------


@dataclass
class Row:
    name: str
    samples: list[Sample] = field(default_factory=list)

    @property
    def fps(self) -> list[float]:
        return [x.fps for x in self.samples]

    @property
    def median(self) -> float:
        return statistics.median(self.fps)

    def median_cpu(self, attr: str) -> float | None:
        values = [getattr(x, attr) for x in self.samples]
        return None if None in values else statistics.median(values)


def bench_size(
    size: int, frames: int, repeats: int, credits: int, positions: int, mode: str
) -> dict[str, Row]:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 4096, (size, size), dtype=np.uint16)
    runs = {
        "scopeloop": scopeloop_once,
        "raw": raw_once,
        "raw_io": raw_threaded_once,
    }
    rows = {
        "scopeloop": Row("scopeloop stream"),
        "raw": Row("raw pyzmq"),
        "raw_io": Row("raw pyzmq, I/O thread"),
    }
    # Warm-up: imports, first connections, page faults of the socket buffers.
    for run in runs.values():
        run(image, min(frames, 50), credits, positions, mode)
    for _ in range(repeats):
        for key, run in runs.items():
            rows[key].samples.append(run(image, frames, credits, positions, mode))
    return rows


# -- report -------------------------------------------------------------------


def _us(x: float | None) -> str:
    return f"{'-':>8}" if x is None else f"{x:8.0f}"


def print_table(
    size: int,
    frames: int,
    args: argparse.Namespace,
    rows: dict[str, Row],
    out: Callable[[str], None],
) -> float:
    mb = size * size * 2 / 1e6
    out(
        f"\n{size}x{size} uint16 ({mb:.3f} MB/frame), {frames} frames x "
        f"{args.repeats} repeats, {args.credits} credits, {args.positions} "
        f"positions rotating, worker in a {args.worker}"
    )
    header = (
        f"{'path':<23}{'median':>9}{'min':>9}{'max':>9}{'MB/s':>7}"
        f"{'us/frame':>9}{'ratio':>7}{'cpu ctrl':>9}{'cpu wrk':>8}"
    )
    out(header)
    out("-" * len(header))
    raw = rows["raw"].median
    for key, row in rows.items():
        ratio = f"{row.median / raw:7.3f}" if key != "raw" else f"{'':7}"
        out(
            f"{row.name:<23}{row.median:9.1f}{min(row.fps):9.1f}"
            f"{max(row.fps):9.1f}{row.median * mb:7.0f}"
            f"{1e6 / row.median:9.1f}{ratio} {_us(row.median_cpu('ctrl_cpu_us'))}"
            f"{_us(row.median_cpu('worker_cpu_us'))}"
        )
    ratio = rows["scopeloop"].median / raw
    extra = 1e6 / rows["scopeloop"].median - 1e6 / raw
    out(
        "(frames/s, median/min/max over repeats; MB/s and us/frame (wall) of the "
        "median; ratio = row / raw pyzmq; cpu ctrl/wrk = median CPU us per frame "
        "of the controller process and of the worker process, all their threads)"
    )
    verdict = "MET" if ratio >= GOAL_RATIO else "MISSED"
    out(
        f"Goal: scopeloop >= {GOAL_RATIO:.0%} of raw pyzmq: {ratio:.1%} "
        f"({extra:+.1f} us/frame) -> {verdict}"
    )
    return ratio


def machine() -> dict[str, str]:
    return {
        "processor": platform.processor() or "(empty)",
        "machine": platform.machine(),
        "cpus": str(os.cpu_count()),
        **package_versions(),
        "libzmq": zmq.zmq_version(),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--frames",
        type=int,
        default=None,
        help="frames per run for every size (default: 1000 at 512, 100 at 2048, "
        "500 otherwise)",
    )
    p.add_argument(
        "--repeats", type=int, default=11, help="timed runs per row (default 11)"
    )
    p.add_argument(
        "--sizes",
        type=int,
        nargs="+",
        default=[512, 2048],
        help="square frame sizes in pixels, uint16 (default: 512 2048)",
    )
    p.add_argument(
        "--credits",
        type=int,
        default=4,
        help="credits the worker grants = frames in flight at most (default 4)",
    )
    p.add_argument(
        "--positions",
        type=int,
        default=None,
        help="positions the frames rotate over (default: credits + 1; must be "
        "more than credits, or the keep-newest queue could supersede frames)",
    )
    p.add_argument(
        "--worker",
        choices=("process", "thread"),
        default="process",
        help="where the worker runs (default: a spawned process)",
    )
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    args = p.parse_args(argv)
    if args.positions is None:
        args.positions = args.credits + 1
    if args.repeats < 1 or (args.frames is not None and args.frames < 1):
        p.error("--repeats and --frames must be >= 1")
    if not 1 <= args.credits <= 64 or args.positions <= args.credits:
        p.error("--credits must be 1..64 and --positions more than --credits")

    def out(line: str = "") -> None:
        print(line, flush=True)

    m = machine()
    out("bench_transport: " + ", ".join(f"{k} {v}" for k, v in m.items()))
    started = time.perf_counter()
    results: dict[str, Any] = {"machine": m, "args": vars(args), "sizes": {}}
    for size in args.sizes:
        frames = args.frames or DEFAULT_FRAMES.get(size, 500)
        rows = bench_size(
            size, frames, args.repeats, args.credits, args.positions, args.worker
        )
        ratio = print_table(size, frames, args, rows, out)
        results["sizes"][str(size)] = {
            "frames": frames,
            "ratio": ratio,
            "rows": {
                k: {"name": r.name, "samples": [vars(x) for x in r.samples]}
                for k, r in rows.items()
            },
        }
    out(f"\ntotal {time.perf_counter() - started:.1f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
