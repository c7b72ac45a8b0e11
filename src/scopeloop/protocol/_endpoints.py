"""The two ends of the frame stream over ZeroMQ.

The controller's `FrameServer` binds a ROUTER socket (the stable end binds);
workers' `FrameClient`s connect DEALER sockets. Flow control is by credit: a
worker's hello grants N credits, each frame sent uses one, each result returns
one. Frames wait in a small queue that keeps the newest frame per position, so
a slow or absent worker makes the controller skip frames (counted, with a
reason) and never makes it wait. Workers send heartbeats, which the server
echoes: a worker silent for `worker_timeout_s` is dropped (its frames in flight
are reported lost), and a worker that hears no echo reconnects and says hello
again, so either end may start first, die and come back.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol
from urllib.parse import urlparse

import zmq

from scopeloop.errors import ConfigError

from ._codec import ProtocolError, decode, encode
from ._messages import FrameMessage, Heartbeat, Hello, ResultMessage

if TYPE_CHECKING:
    from collections.abc import Sequence

    import numpy as np

__all__ = ["FrameClient", "FrameServer", "ServerListener", "ServerStats"]

logger = logging.getLogger("scopeloop.protocol")


def check_loopback(address: str) -> None:
    """Refuse to listen anywhere but on this machine (no authentication yet)."""
    url = urlparse(address)
    if url.scheme in ("inproc", "ipc"):
        return
    host = (url.hostname or "").strip("[]")
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if url.scheme != "tcp" or not loopback:
        raise ConfigError(
            f"worker address {address!r}: the controller listens only on loopback "
            "(tcp://127.0.0.1:PORT); listening on a network interface needs "
            "CURVE authentication, which this version does not offer"
        )


def _readable(socket: zmq.Socket[bytes]) -> bool:
    """Whether a message waits (cheaper than a receive that fails)."""
    return bool(int(socket.get(zmq.EVENTS)) & zmq.POLLIN)


class ServerListener(Protocol):
    """What the server reports, from its I/O thread (keep each call quick)."""

    def frame_sent(self, frame_index: int, worker_id: str, sent_at: float) -> None:
        """A frame left for a worker."""

    def frame_skipped(self, frame_index: int, reason: str) -> None:
        """A frame will not be analysed (superseded, no worker, run ended)."""

    def frame_lost(self, frame_index: int, reason: str) -> None:
        """A frame was sent but its worker went away before answering."""

    def result_received(
        self, result: ResultMessage, arrays: list[np.ndarray], received_at: float
    ) -> None:
        """A worker's result arrived."""


@dataclass(frozen=True, slots=True)
class ServerStats:
    """A snapshot of the stream's counters."""

    submitted: int = 0
    sent: int = 0
    skipped: int = 0
    lost: int = 0
    results: int = 0
    rejected: int = 0
    queue_depth: int = 0
    in_flight: int = 0
    workers: int = 0


@dataclass(slots=True)
class _Worker:
    worker_id: str
    credits: int
    last_seen: float
    in_flight: dict[int, float] = field(default_factory=dict)


class FrameServer:
    """Controller end: queues frames, sends them to workers, takes results.

    Parameters
    ----------
    address
        Where to bind, e.g. ``tcp://127.0.0.1:5555`` (loopback only).
    listener
        Receives sent/skipped/lost/result reports from the I/O thread.
    max_queue
        Frames kept waiting at most (the newest per position; the oldest
        overall is skipped beyond that).

    """

    def __init__(
        self,
        address: str,
        listener: ServerListener,
        *,
        max_queue: int = 16,
        worker_timeout_s: float = 3.0,
        result_timeout_s: float = 60.0,
        max_message_bytes: int = 256 << 20,
    ) -> None:
        check_loopback(address)
        self._result_timeout_s = result_timeout_s
        self._closed = False
        self.address = address
        self._listener = listener
        self._max_queue = max_queue
        self._worker_timeout_s = worker_timeout_s
        self._pending: OrderedDict[int, tuple[FrameMessage, np.ndarray]] = OrderedDict()
        self._lock = threading.Lock()
        self._counts = dict.fromkeys(
            ("submitted", "skipped", "sent", "lost", "results", "rejected"), 0
        )
        self._workers: dict[bytes, _Worker] = {}
        self._stop = threading.Event()
        self._worker_seen = threading.Event()
        self._ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
        self._socket = self._ctx.socket(zmq.ROUTER)
        self._socket.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self._socket.setsockopt(zmq.LINGER, 0)
        self._socket.setsockopt(zmq.MAXMSGSIZE, max_message_bytes)
        try:
            self._socket.bind(address)
        except zmq.ZMQError as e:
            self._socket.close()
            raise ConfigError(f"cannot listen on {address!r}: {e}") from None
        self.bound_address = self._socket.getsockopt_string(zmq.LAST_ENDPOINT)
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        self._thread = threading.Thread(
            target=self._run, name="scopeloop-stream", daemon=True
        )
        self._thread.start()

    # -- called from the acquisition thread ---------------------------------

    def submit(self, frame: FrameMessage, image: np.ndarray) -> None:
        """Queue a frame for analysis; never blocks.

        A frame still waiting at the same position is skipped ("superseded"):
        the newest frame per position is the one worth analysing.
        """
        skipped: list[int] = []
        with self._lock:
            self._counts["submitted"] += 1
            was_empty = not self._pending
            old = self._pending.pop(frame.position, None)
            if old is not None:
                skipped.append(old[0].frame_index)
            self._pending[frame.position] = (frame, image)
            while len(self._pending) > self._max_queue:
                _, (dropped, _) = self._pending.popitem(last=False)
                skipped.append(dropped.frame_index)
            self._counts["skipped"] += len(skipped)
        for index in skipped:
            self._listener.frame_skipped(index, "superseded")
        if was_empty:
            # A non-empty queue means the I/O thread is awake already or waits
            # for a credit, which a result (waking it) brings.
            with contextlib.suppress(BlockingIOError):
                os.write(self._wake_w, b"\0")

    def wait_for_worker(self, timeout_s: float) -> bool:
        """Wait until a worker has said hello (or `timeout_s` passed)."""
        return self._worker_seen.wait(timeout_s)

    @property
    def stats(self) -> ServerStats:
        """Current counters."""
        with self._lock:
            return ServerStats(
                **self._counts,
                queue_depth=len(self._pending),
                in_flight=sum(len(w.in_flight) for w in self._workers.values()),
                workers=len(self._workers),
            )

    def close(self, drain_s: float = 0.0) -> None:
        """Stop; frames still queued are skipped ("run ended").

        `drain_s` gives workers that long to answer frames in flight first.
        Closing twice does nothing.
        """
        if self._closed:
            return
        try:
            deadline = time.monotonic() + drain_s
            while drain_s > 0 and time.monotonic() < deadline:
                s = self.stats
                if s.in_flight == 0 and (s.queue_depth == 0 or s.workers == 0):
                    break
                time.sleep(0.02)
        finally:  # an interrupted drain still closes everything
            self._closed = True
            self._stop.set()
            with contextlib.suppress(BlockingIOError):
                os.write(self._wake_w, b"\0")
            self._thread.join()
            with self._lock:
                left = [f.frame_index for f, _ in self._pending.values()]
                self._pending.clear()
                self._counts["skipped"] += len(left)
                lost = [
                    (w.worker_id, i)
                    for w in self._workers.values()
                    for i in w.in_flight
                ]
                self._counts["lost"] += len(lost)
                self._workers.clear()
            for index in left:
                self._listener.frame_skipped(index, "run ended")
            for worker_id, index in lost:
                self._listener.frame_lost(
                    index, f"no result from {worker_id} before the end"
                )
            self._socket.close()
            os.close(self._wake_r)
            os.close(self._wake_w)

    # -- the I/O thread -----------------------------------------------------

    def _run(self) -> None:
        poller = zmq.Poller()
        poller.register(self._socket, zmq.POLLIN)
        poller.register(self._wake_r, zmq.POLLIN)
        while not self._stop.is_set():
            ready = dict(poller.poll(timeout=250))
            if self._wake_r in ready:
                os.read(self._wake_r, 4096)
            if self._socket in ready:
                self._receive_all()
            self._expire_workers()
            self._dispatch()

    def _receive_all(self) -> None:
        while _readable(self._socket):
            identity, *parts = self._socket.recv_multipart(copy=False)
            now = time.monotonic()
            try:
                header, arrays = decode(parts)
            except ProtocolError as e:
                self._reject(identity.bytes, str(e))
                continue
            key = identity.bytes
            if isinstance(header, Hello):
                self._hello(key, header, now)
            elif key not in self._workers:
                self._reject(key, f"{header.kind} from an unknown worker (no hello)")
            elif isinstance(header, Heartbeat):
                self._workers[key].last_seen = now
                self._send(key, Heartbeat(sender="controller", time_s=now))
            elif isinstance(header, ResultMessage):
                self._result(key, header, arrays, now)
            else:
                self._reject(key, f"unexpected {header.kind!r} message from a worker")

    def _reject(self, identity: bytes, reason: str) -> None:
        with self._lock:
            self._counts["rejected"] += 1
            n = self._counts["rejected"]
        if n <= 10 or n % 100 == 0:
            logger.warning("rejected message #%d from %r: %s", n, identity, reason)

    def _hello(self, key: bytes, hello: Hello, now: float) -> None:
        with self._lock:
            old = self._workers.pop(key, None)
            self._workers[key] = _Worker(hello.worker_id, hello.credits, now)
        self._worker_seen.set()
        if old is not None:
            self._lose(old, "worker said hello again")
        logger.info(
            "worker %s connected (%s, %d credits)",
            hello.worker_id,
            hello.device,
            hello.credits,
        )
        self._send(key, Heartbeat(sender="controller", time_s=now))

    def _result(
        self, key: bytes, result: ResultMessage, arrays: list[np.ndarray], now: float
    ) -> None:
        worker = self._workers[key]
        worker.last_seen = now
        with self._lock:
            expected = worker.in_flight.pop(result.frame_index, None) is not None
            if expected:
                worker.credits += 1
            else:
                self._counts["rejected"] += 1
        if not expected:
            logger.warning(
                "result for frame %d that %s was not sent",
                result.frame_index,
                worker.worker_id,
            )
            return
        with self._lock:
            self._counts["results"] += 1
        self._listener.result_received(result, arrays, now)

    def _lose(self, worker: _Worker, reason: str) -> None:
        with self._lock:
            self._counts["lost"] += len(worker.in_flight)
        for index in worker.in_flight:
            self._listener.frame_lost(index, f"{worker.worker_id}: {reason}")

    def _expire_workers(self) -> None:
        now = time.monotonic()
        for worker in list(self._workers.values()):
            # A frame unanswered for long (e.g. its result was malformed and
            # rejected) is given up, and its credit returned to the worker.
            overdue = [
                i
                for i, sent in worker.in_flight.items()
                if now - sent > self._result_timeout_s
            ]
            for index in overdue:
                with self._lock:
                    worker.in_flight.pop(index, None)
                    worker.credits += 1
                    self._counts["lost"] += 1
                self._listener.frame_lost(
                    index,
                    f"no result from {worker.worker_id} within "
                    f"{self._result_timeout_s:g} s",
                )
        # A worker busy with frames is judged by result_timeout_s above (a long
        # analysis sends nothing); an idle one by its heartbeats.
        gone = [
            k
            for k, w in self._workers.items()
            if not w.in_flight and now - w.last_seen > self._worker_timeout_s
        ]
        for key in gone:
            with self._lock:
                worker = self._workers.pop(key)
            logger.warning(
                "worker %s silent for %.1f s: dropped",
                worker.worker_id,
                now - worker.last_seen,
            )
            self._lose(worker, "went silent")

    def _dispatch(self) -> None:
        while True:
            with self._lock:
                ready = [(k, w) for k, w in self._workers.items() if w.credits > 0]
                if not ready or not self._pending:
                    return
                key, worker = max(ready, key=lambda kw: kw[1].credits)
                _, (frame, image) = self._pending.popitem(last=False)
                worker.credits -= 1
            if not self._send(key, frame, [image]):
                with self._lock:
                    self._workers.pop(key, None)
                    requeue = frame.position not in self._pending
                    if requeue:
                        self._pending[frame.position] = (frame, image)
                        self._pending.move_to_end(frame.position, last=False)
                    else:
                        self._counts["skipped"] += 1
                if not requeue:
                    self._listener.frame_skipped(frame.frame_index, "superseded")
                self._lose(worker, "unreachable")
                continue
            now = time.monotonic()
            with self._lock:
                worker.in_flight[frame.frame_index] = now
                self._counts["sent"] += 1
            self._listener.frame_sent(frame.frame_index, worker.worker_id, now)

    def _send(
        self,
        key: bytes,
        header: FrameMessage | Heartbeat,
        arrays: Sequence[np.ndarray] = (),
    ) -> bool:
        try:
            self._socket.send_multipart(
                [key, *encode(header, arrays)], zmq.NOBLOCK, copy=False
            )
        except (zmq.Again, zmq.ZMQError) as e:
            logger.warning("cannot send to worker %r: %s", key, e)
            return False
        return True


class FrameClient:
    """Worker end: connects, says hello, receives frames, returns results.

    Reconnects and says hello again when the controller stops echoing its
    heartbeats (controller restarted or gone).
    """

    def __init__(
        self,
        address: str,
        worker_id: str | None = None,
        *,
        credits: int = 2,
        device: str = "cpu",
        models: dict[str, str] | None = None,
        heartbeat_s: float = 0.5,
        controller_timeout_s: float = 3.0,
    ) -> None:
        self.address = address
        self.worker_id = worker_id or f"worker-{uuid.uuid4().hex[:8]}"
        self._hello = Hello(
            worker_id=self.worker_id,
            credits=credits,
            device=device,
            models=models or {},
        )
        self._heartbeat_s = heartbeat_s
        self._timeout_s = controller_timeout_s
        self._ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
        self._socket: zmq.Socket[bytes] | None = None
        self.rejected = 0
        self.reconnects = 0
        self._connect()

    def _connect(self) -> None:
        if self._socket is not None:
            self._socket.close(linger=0)
            self.reconnects += 1
        self._socket = self._ctx.socket(zmq.DEALER)
        self._socket.setsockopt(zmq.LINGER, 0)
        self._socket.connect(self.address)
        self._socket.send_multipart(encode(self._hello))
        now = time.monotonic()
        self._last_heard = now
        self._last_beat = now

    def receive(self, timeout_s: float = 1.0) -> tuple[FrameMessage, np.ndarray] | None:
        """The next frame, or None after `timeout_s` without one."""
        assert self._socket is not None
        deadline = time.monotonic() + timeout_s
        while True:
            now = time.monotonic()
            if now - self._last_heard > self._timeout_s:
                self._connect()
            elif now - self._last_beat >= self._heartbeat_s:
                self._socket.send_multipart(
                    encode(Heartbeat(sender=self.worker_id, time_s=now))
                )
                self._last_beat = now
            wait = min(deadline, self._last_beat + self._heartbeat_s) - now
            ready = _readable(self._socket) or self._socket.poll(
                max(0, int(wait * 1000)), zmq.POLLIN
            )
            if ready:
                parts = self._socket.recv_multipart(copy=False)
                self._last_heard = now
                try:
                    header, arrays = decode(parts)
                except ProtocolError as e:
                    self.rejected += 1
                    logger.warning("rejected message from controller: %s", e)
                    continue
                if isinstance(header, FrameMessage):
                    return header, arrays[0]
            elif time.monotonic() >= deadline:
                return None

    def send_result(
        self, result: ResultMessage, arrays: Sequence[np.ndarray] = ()
    ) -> None:
        """Return a result (and with it, one credit)."""
        assert self._socket is not None
        self._socket.send_multipart(encode(result, arrays), copy=False)

    def close(self) -> None:
        """Close the socket."""
        if self._socket is not None:
            self._socket.close(linger=0)
            self._socket = None
