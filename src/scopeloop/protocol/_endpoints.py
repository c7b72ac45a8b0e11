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
import math
import os
import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlparse

import zmq

from scopeloop.errors import ConfigError

from ._codec import ProtocolError, decode, encode
from ._messages import FrameMessage, Heartbeat, Hello, ResultMessage

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    import numpy as np

    from ._messages import Message

__all__ = ["FrameClient", "FrameServer", "ServerListener", "ServerStats"]

logger = logging.getLogger("scopeloop.protocol")

_POLL_MS = 250  # the I/O thread's longest sleep
_CHECK_S = 0.02  # how often it looks for overdue frames and silent workers
_BATCH = 64  # messages it takes in per round at most


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


_EVENTS = int(zmq.EVENTS)
_POLLIN = int(zmq.POLLIN)


_NOBLOCK = int(zmq.NOBLOCK)
_MORE_NOBLOCK = int(zmq.SNDMORE | zmq.NOBLOCK)
_MORE = int(zmq.SNDMORE)


def _readable(socket: zmq.Socket[bytes]) -> bool:
    """Whether a message waits (cheaper than a receive that fails)."""
    return bool(int(socket.getsockopt(_EVENTS)) & _POLLIN)


# pyzmq's send_multipart/recv_multipart spend more time in Python than the
# message itself costs; these do the same with plain int flags.


def _recv_parts(socket: zmq.Socket[bytes]) -> list[zmq.Frame]:
    """Every part of the next message (one is waiting), without copies."""
    part = socket.recv(0, copy=False)
    parts = [part]
    while part.more:
        part = socket.recv(0, copy=False)
        parts.append(part)
    return parts


def _send_parts(socket: zmq.Socket[bytes], parts: Sequence[Any], noblock: bool) -> None:
    """Send a multipart message: bytes parts copied (small), buffers not.

    ZeroMQ takes a multipart message whole or not at all: a part after the
    first cannot fail once the first was taken.
    """
    more, last = (_MORE_NOBLOCK, _NOBLOCK) if noblock else (_MORE, 0)
    end = len(parts) - 1
    for i, part in enumerate(parts):
        socket.send(part, more if i < end else last, copy=type(part) is bytes)


class ServerListener(Protocol):
    """What the server reports (keep each call quick).

    Reports come from the server's I/O thread, in the order things happened
    (a frame's `frame_sent` before its `result_received` or `frame_lost`),
    except `frame_skipped` for a frame superseded in the queue, which comes
    from the thread that submitted the newer frame, and the reports of
    `FrameServer.close`, which come from the closing thread. `frame_sent` of a
    frame sent by `FrameServer.submit` is delivered on the I/O thread's next
    round (at the latest with the frame's result, or within a quarter second).
    """

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

    A frame submitted while a worker has a credit is sent at once, on the
    submitting thread; otherwise it waits in the queue and the I/O thread sends
    it when a result returns a credit. Every use of the socket happens under
    one lock (ZeroMQ sockets may change threads behind a memory barrier), and
    the I/O thread waits on the socket's file descriptor rather than on the
    socket, so waiting never holds the lock.

    Parameters
    ----------
    address
        Where to bind, e.g. ``tcp://127.0.0.1:5555`` (loopback only).
    listener
        Receives sent/skipped/lost/result reports (see `ServerListener`).
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
        self._stopping = False
        self.address = address
        self._listener = listener
        self._max_queue = max_queue
        self._worker_timeout_s = worker_timeout_s
        self._pending: OrderedDict[int, tuple[FrameMessage, np.ndarray]] = OrderedDict()
        self._lock = threading.Lock()
        self._submitted = self._skipped = self._sent = 0
        self._lost = self._results = self._rejected = 0
        self._workers: dict[bytes, _Worker] = {}
        # Reports made under the lock, delivered in order by the I/O thread.
        self._notes: list[tuple[Callable[..., None], tuple[Any, ...]]] = []
        self._io_waiting = False
        self._stop = threading.Event()
        self._worker_seen = threading.Event()
        self._hellos: dict[str, Hello] = {}
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
        """Queue a frame for analysis, or send it at once; never waits for a worker.

        A frame still waiting at the same position is skipped ("superseded"):
        the newest frame per position is the one worth analysing.
        """
        skipped: list[int] = []
        with self._lock:
            self._submitted += 1
            pending = self._pending
            position = frame.position
            old = pending.pop(position, None)
            if old is not None:
                skipped.append(old[0].frame_index)
            pending[position] = (frame, image)
            while len(pending) > self._max_queue:
                _, (dropped, _) = pending.popitem(last=False)
                skipped.append(dropped.frame_index)
            self._skipped += len(skipped)
            if not self._stopping:
                # Reports of frames sent wait for the I/O thread's next round
                # (it delivers them before any result for those frames); a
                # worker lost on the way is reported at once.
                urgent = self._dispatch(self._notes)
                self._wake_if_needed(urgent)
        for index in skipped:
            self._listener.frame_skipped(index, "superseded")

    def wait_for_worker(self, timeout_s: float) -> bool:
        """Wait until a worker has said hello (or `timeout_s` passed)."""
        return self._worker_seen.wait(timeout_s)

    @property
    def workers_seen(self) -> list[Hello]:
        """The latest hello of every worker that connected: device, models."""
        return list(self._hellos.copy().values())

    @property
    def stats(self) -> ServerStats:
        """Current counters."""
        with self._lock:
            return ServerStats(
                submitted=self._submitted,
                sent=self._sent,
                skipped=self._skipped,
                lost=self._lost,
                results=self._results,
                rejected=self._rejected,
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
            with self._lock:
                self._stopping = True  # no more sends from submit
            self._stop.set()
            self._wake()
            self._thread.join()
            with self._lock:
                notes, self._notes = self._notes, []
                left = [f.frame_index for f, _ in self._pending.values()]
                self._pending.clear()
                self._skipped += len(left)
                lost = [
                    (w.worker_id, i)
                    for w in self._workers.values()
                    for i in w.in_flight
                ]
                self._lost += len(lost)
                self._workers.clear()
                self._socket.close()
            self._deliver(notes)
            for index in left:
                self._listener.frame_skipped(index, "run ended")
            for worker_id, index in lost:
                self._listener.frame_lost(
                    index, f"no result from {worker_id} before the end"
                )
            os.close(self._wake_r)
            os.close(self._wake_w)

    # -- the I/O thread -----------------------------------------------------

    def _wake(self) -> None:
        with contextlib.suppress(BlockingIOError):
            os.write(self._wake_w, b"\0")

    def _wake_if_needed(self, urgent: bool) -> None:
        """After using the socket (lock held): wake the I/O thread if it must act.

        The socket's descriptor is edge-triggered: using the socket may take
        the signal of a message that is waiting, so the I/O thread, if it is
        waiting, must be told; so it must if `urgent` reports wait for it.
        """
        if self._io_waiting and (urgent or _readable(self._socket)):
            self._io_waiting = False
            self._wake()

    def _run(self) -> None:
        poller = zmq.Poller()
        poller.register(self._socket.getsockopt(zmq.FD), zmq.POLLIN)
        poller.register(self._wake_r, zmq.POLLIN)
        socket = self._socket
        next_check = 0.0
        while True:
            with self._lock:
                self._io_waiting = False
                messages: list[list[zmq.Frame]] = []
                # A bounded batch: submit waits for this lock meanwhile.
                while len(messages) < _BATCH and _readable(socket):
                    messages.append(_recv_parts(socket))
            now = time.monotonic()
            decoded = [self._decode(parts) for parts in messages]
            busy = False
            with self._lock:
                calls, self._notes = self._notes, []
                for item in decoded:
                    if item is not None:
                        self._handle(*item, now, calls)
                if now >= next_check:
                    self._expire_workers(now, calls)
                    next_check = now + _CHECK_S
                stop = self._stop.is_set()
                # With no frame queued, nothing can go out in the wake of
                # these reports: this round ends here.
                settled = stop or not self._pending
                if settled:
                    busy = self._settle(stop)
            # What happened is reported before any frame goes out in its wake.
            self._deliver(calls)
            if not settled:
                with self._lock:
                    calls, self._notes = self._notes, []
                    stop = self._stop.is_set()
                    if not stop:
                        self._dispatch(calls)
                    busy = self._settle(stop)
                self._deliver(calls)
            if stop:
                return
            if not busy:
                for fd, _ in poller.poll(timeout=_POLL_MS):
                    if fd == self._wake_r:
                        os.read(self._wake_r, 4096)

    def _settle(self, stop: bool) -> bool:
        """Whether a message waits (lock held); if not, the I/O thread may sleep.

        Sleep only with nothing waiting: the socket's descriptor will not
        signal a message that was already there.
        """
        busy = not stop and _readable(self._socket)
        self._io_waiting = not busy
        return busy

    def _deliver(
        self, calls: list[tuple[Callable[..., None], tuple[Any, ...]]]
    ) -> None:
        for call, args in calls:
            try:
                call(*args)
            except Exception:  # a listener's failure must not stop the stream
                logger.exception("stream listener failed")

    def _decode(
        self, message: list[zmq.Frame]
    ) -> tuple[bytes, Message, list[np.ndarray]] | None:
        identity, *parts = message
        key = identity.bytes
        try:
            header, arrays = decode(parts)
        except ProtocolError as e:
            with self._lock:
                self._reject(key, str(e))
            return None
        return key, header, arrays

    def _handle(
        self,
        key: bytes,
        header: Message,
        arrays: list[np.ndarray],
        now: float,
        calls: list[tuple[Callable[..., None], tuple[Any, ...]]],
    ) -> None:
        """Act on one received message (lock held)."""
        worker = self._workers.get(key)
        if isinstance(header, ResultMessage) and worker is not None:
            worker.last_seen = now
            if worker.in_flight.pop(header.frame_index, None) is None:
                self._rejected += 1
                logger.warning(
                    "result for frame %d that %s was not sent",
                    header.frame_index,
                    worker.worker_id,
                )
                return
            worker.credits += 1
            self._results += 1
            calls.append((self._listener.result_received, (header, arrays, now)))
        elif isinstance(header, Hello):
            self._hello(key, header, now, calls)
        elif worker is None:
            self._reject(key, f"{header.kind} from an unknown worker (no hello)")
        elif isinstance(header, Heartbeat):
            worker.last_seen = now
            self._send(key, encode(Heartbeat(sender="controller", time_s=now)))
        else:
            self._reject(key, f"unexpected {header.kind!r} message from a worker")

    def _reject(self, identity: bytes, reason: str) -> None:
        self._rejected += 1
        n = self._rejected
        if n <= 10 or n % 100 == 0:
            logger.warning("rejected message #%d from %r: %s", n, identity, reason)

    def _hello(
        self,
        key: bytes,
        hello: Hello,
        now: float,
        calls: list[tuple[Callable[..., None], tuple[Any, ...]]],
    ) -> None:
        old = self._workers.pop(key, None)
        self._workers[key] = _Worker(hello.worker_id, hello.credits, now)
        self._hellos[hello.worker_id] = hello
        self._worker_seen.set()
        if old is not None:
            self._lose(old, "worker said hello again", calls)
        logger.info(
            "worker %s connected (%s, %d credits)",
            hello.worker_id,
            hello.device,
            hello.credits,
        )
        self._send(key, encode(Heartbeat(sender="controller", time_s=now)))

    def _lose(
        self,
        worker: _Worker,
        reason: str,
        calls: list[tuple[Callable[..., None], tuple[Any, ...]]],
    ) -> None:
        self._lost += len(worker.in_flight)
        report = f"{worker.worker_id}: {reason}"
        calls.extend((self._listener.frame_lost, (i, report)) for i in worker.in_flight)
        worker.in_flight.clear()

    def _expire_workers(
        self, now: float, calls: list[tuple[Callable[..., None], tuple[Any, ...]]]
    ) -> None:
        for key, worker in list(self._workers.items()):
            # A frame unanswered for long (e.g. its result was malformed and
            # rejected) is given up, and its credit returned to the worker.
            overdue = [
                i
                for i, sent in worker.in_flight.items()
                if now - sent > self._result_timeout_s
            ]
            for index in overdue:
                del worker.in_flight[index]
                worker.credits += 1
                self._lost += 1
                calls.append(
                    (
                        self._listener.frame_lost,
                        (
                            index,
                            f"no result from {worker.worker_id} within "
                            f"{self._result_timeout_s:g} s",
                        ),
                    )
                )
            # A worker busy with frames is judged by result_timeout_s above (a
            # long analysis sends nothing); an idle one by its heartbeats.
            if not worker.in_flight and now - worker.last_seen > self._worker_timeout_s:
                del self._workers[key]
                logger.warning(
                    "worker %s silent for %.1f s: dropped",
                    worker.worker_id,
                    now - worker.last_seen,
                )

    def _dispatch(
        self, calls: list[tuple[Callable[..., None], tuple[Any, ...]]]
    ) -> bool:
        """Send queued frames to workers with credits (lock held).

        Returns whether something went wrong that must be reported at once (a
        worker found unreachable, a frame that cannot be encoded).
        """
        failed = False
        pending = self._pending
        while pending:
            key, worker = b"", None
            for k, w in self._workers.items():
                if w.credits > (worker.credits if worker is not None else 0):
                    key, worker = k, w
            if worker is None:
                return failed
            _, (frame, image) = pending.popitem(last=False)
            try:
                parts = encode(frame, (image,))
            except ProtocolError as e:  # the image does not match its header
                self._skipped += 1
                calls.append(
                    (self._listener.frame_skipped, (frame.frame_index, f"{e}"))
                )
                failed = True  # report it now
                continue
            worker.credits -= 1
            if not self._send(key, parts):
                del self._workers[key]
                if frame.position not in pending:
                    pending[frame.position] = (frame, image)
                    pending.move_to_end(frame.position, last=False)
                else:
                    self._skipped += 1
                    calls.append(
                        (
                            self._listener.frame_skipped,
                            (frame.frame_index, "superseded"),
                        )
                    )
                self._lose(worker, "unreachable", calls)
                failed = True
                continue
            now = time.monotonic()
            worker.in_flight[frame.frame_index] = now
            self._sent += 1
            calls.append(
                (self._listener.frame_sent, (frame.frame_index, worker.worker_id, now))
            )
        return failed

    def _send(self, key: bytes, parts: list[Any]) -> bool:
        """Send one message to a worker (lock held); False if it cannot be."""
        try:
            _send_parts(self._socket, [key, *parts], noblock=True)
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
        self._poller = zmq.Poller()
        self._poller.register(self._socket, zmq.POLLIN)
        self._socket.send_multipart(encode(self._hello))
        now = time.monotonic()
        self._last_heard = now
        self._last_beat = now

    def receive(self, timeout_s: float = 1.0) -> tuple[FrameMessage, np.ndarray] | None:
        """The next frame, or None after `timeout_s` without one."""
        socket = self._socket
        assert socket is not None
        deadline = None
        while True:
            now = time.monotonic()
            if now - self._last_heard > self._timeout_s:
                self._connect()  # says hello again
                socket = self._socket
                assert socket is not None
            elif now - self._last_beat >= self._heartbeat_s:
                socket.send(encode(Heartbeat(sender=self.worker_id, time_s=now))[0])
                self._last_beat = now
            if deadline is None:
                deadline = now + timeout_s
            if not _readable(socket):
                wait = min(deadline, self._last_beat + self._heartbeat_s) - now
                # Rounded up: a wait cut to 0 ms would spin until the deadline.
                if not self._poller.poll(max(0, math.ceil(wait * 1000))):
                    if time.monotonic() >= deadline:
                        return None
                    continue
            parts = _recv_parts(socket)
            self._last_heard = now
            try:
                header, arrays = decode(parts)
            except ProtocolError as e:
                self.rejected += 1
                logger.warning("rejected message from controller: %s", e)
                continue
            if isinstance(header, FrameMessage):
                return header, arrays[0]

    def send_result(
        self, result: ResultMessage, arrays: Sequence[np.ndarray] = ()
    ) -> None:
        """Return a result (and with it, one credit)."""
        assert self._socket is not None
        parts = encode(result, arrays)
        _send_parts(self._socket, parts, noblock=False)

    def close(self, linger_s: float = 1.0) -> None:
        """Close the socket; results sent just before still go out.

        A result is on its way once `send_result` returns, but ZeroMQ writes it
        to the connection in the background: for up to `linger_s` after the
        close (in the background too), what is still queued is delivered
        rather than dropped. Closing does not wait.
        """
        if self._socket is not None:
            self._socket.close(linger=max(0, round(linger_s * 1000)))
            self._socket = None
