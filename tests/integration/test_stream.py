"""The frame stream over real loopback sockets: flow control, drops, failures.

Tests wait on what the server reports (listener calls and log records) or on
`FrameClient.receive`, always with a generous timeout, never on fixed sleeps.
Where a real interval is inherent (a worker's silence, a controller's), the
timeouts are configured small instead.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest
import zmq

from scopeloop.errors import ConfigError
from scopeloop.protocol import (
    ArraySpec,
    FrameClient,
    FrameMessage,
    FrameServer,
    NucleusRecord,
    ResultMessage,
    ServerStats,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path

TIMEOUT_S = 10.0
LOOPBACK = "tcp://127.0.0.1:0"
LOGGER = logging.getLogger("scopeloop.protocol")


class StreamRecorder(logging.Handler):
    """A server listener that records what the server reports, and its log.

    Predicates given to `wait_for` run under the recorder's lock: they may read
    the recorded events but not call into the server (the server logs while
    holding its own lock).
    """

    def __init__(self) -> None:
        super().__init__(level=logging.INFO)
        self._changed = threading.Condition()
        self.events: list[tuple[str, int, str]] = []
        self.results: list[tuple[ResultMessage, list[np.ndarray]]] = []
        self.log: list[str] = []

    def _record(
        self,
        kind: str,
        frame_index: int,
        detail: str,
        result: tuple[ResultMessage, list[np.ndarray]] | None = None,
    ) -> None:
        with self._changed:
            self.events.append((kind, frame_index, detail))
            if result is not None:
                self.results.append(result)
            self._changed.notify_all()

    def frame_sent(self, frame_index: int, worker_id: str, sent_at: float) -> None:
        self._record("sent", frame_index, worker_id)

    def frame_skipped(self, frame_index: int, reason: str) -> None:
        self._record("skipped", frame_index, reason)

    def frame_lost(self, frame_index: int, reason: str) -> None:
        self._record("lost", frame_index, reason)

    def result_received(
        self, result: ResultMessage, arrays: list[np.ndarray], received_at: float
    ) -> None:
        copies = [a.copy() for a in arrays]
        self._record("result", result.frame_index, result.worker_id, (result, copies))

    def emit(self, record: logging.LogRecord) -> None:
        with self._changed:
            self.log.append(record.getMessage())
            self._changed.notify_all()

    def of(self, kind: str) -> list[tuple[int, str]]:
        """(frame index, detail) of the events of one kind, in order."""
        with self._changed:
            return [(i, detail) for k, i, detail in self.events if k == kind]

    def wait_for(self, predicate: Callable[[], object], what: str) -> None:
        with self._changed:
            if not self._changed.wait_for(predicate, timeout=TIMEOUT_S):
                pytest.fail(
                    f"no {what} within {TIMEOUT_S} s; events: {self.events}; "
                    f"log: {self.log}"
                )

    def wait_for_log(self, words: str) -> str:
        """The first log message containing `words`, once there is one."""
        self.wait_for(lambda: any(words in m for m in self.log), f"log {words!r}")
        return next(m for m in self.log if words in m)


class Stream:
    """The servers, clients and raw sockets of one test, closed at its end."""

    def __init__(self) -> None:
        self._servers: list[FrameServer] = []
        self._clients: list[FrameClient] = []
        self._sockets: list[zmq.Socket[bytes]] = []
        self._recorders: list[StreamRecorder] = []

    def server(
        self, address: str = LOOPBACK, **options: Any
    ) -> tuple[FrameServer, StreamRecorder]:
        recorder = StreamRecorder()
        LOGGER.addHandler(recorder)
        self._recorders.append(recorder)
        server = FrameServer(address, recorder, **options)
        self._servers.append(server)
        return server, recorder

    def close_server(self, server: FrameServer) -> None:
        self._servers.remove(server)
        server.close()

    def client(
        self, address: str, worker_id: str = "w1", **options: Any
    ) -> FrameClient:
        client = FrameClient(address, worker_id, **options)
        self._clients.append(client)
        return client

    def raw_dealer(self, address: str) -> zmq.Socket[bytes]:
        sock = zmq.Context.instance().socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        self._sockets.append(sock)
        sock.connect(address)
        return sock

    def close(self) -> None:
        for client in self._clients:
            client.close()
        for sock in self._sockets:
            sock.close(linger=0)
        for server in self._servers:
            server.close()
        for recorder in self._recorders:
            LOGGER.removeHandler(recorder)


@pytest.fixture
def stream() -> Iterator[Stream]:
    level = LOGGER.level
    LOGGER.setLevel(logging.INFO)
    stream = Stream()
    yield stream
    stream.close()
    LOGGER.setLevel(level)


def free_port_address() -> str:
    """A loopback address on a port that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"tcp://127.0.0.1:{port}"


def frame_of(index: int, position: int = 0) -> tuple[FrameMessage, np.ndarray]:
    image = np.random.default_rng(index).integers(0, 4096, (24, 32), dtype=np.uint16)
    frame = FrameMessage(
        frame_index=index,
        position=position,
        position_name=f"p{position:03d}",
        time_s=float(index),
        exposure_ms=10.0,
        laser_power_mw=1.0,
        pixel_size_um=0.5,
        buffers=(ArraySpec.of("image", image),),
    )
    return frame, image


def answer(client: FrameClient, frame: FrameMessage) -> ResultMessage:
    """Send a result with nuclei and a label image for `frame`."""
    labels = np.zeros(frame.buffers[0].shape, np.uint32)
    labels[2:6, 3:8] = 1
    result = ResultMessage(
        frame_index=frame.frame_index,
        position=frame.position,
        worker_id=client.worker_id,
        timings_ms={"segment": 1.5},
        nuclei=(NucleusRecord(id=1, y=3.5, x=5.0, area_px=20, mean_intensity=100.0),),
        buffers=(ArraySpec.of("labels", labels),),
    )
    client.send_result(result, [labels])
    return result


def receive_frame(client: FrameClient) -> tuple[FrameMessage, np.ndarray]:
    received = client.receive(timeout_s=TIMEOUT_S)
    assert received is not None, f"no frame within {TIMEOUT_S} s"
    return received


# -- frames and results ------------------------------------------------------------


def test_frame_reaches_the_worker_and_its_result_comes_back(stream: Stream) -> None:
    server, recorder = stream.server()
    client = stream.client(server.bound_address, "w1")
    frame, image = frame_of(0)

    server.submit(frame, image)
    received, received_image = receive_frame(client)
    result = answer(client, received)
    recorder.wait_for(lambda: recorder.results, "result")

    assert received == frame
    np.testing.assert_array_equal(received_image, image)
    assert recorder.events == [("sent", 0, "w1"), ("result", 0, "w1")]
    ((got, (labels,)),) = recorder.results
    assert got == result
    assert labels.dtype == np.uint32
    assert labels.sum() == 20
    assert server.stats == ServerStats(submitted=1, sent=1, results=1, workers=1)


@pytest.mark.parametrize("credits", [1, 2, 4], ids=lambda n: f"{n}-credits")
def test_worker_never_holds_more_frames_than_its_credits(
    stream: Stream, credits: int
) -> None:
    server, recorder = stream.server()
    client = stream.client(server.bound_address, credits=credits)
    frames = [frame_of(i, position=i) for i in range(10)]

    for frame, image in frames:
        server.submit(frame, image)
    received = []
    for _ in frames:
        frame, _image = receive_frame(client)
        received.append(frame.frame_index)
        answer(client, frame)
    recorder.wait_for(lambda: len(recorder.results) == len(frames), "all results")

    assert received == list(range(10))  # oldest position first
    unanswered = 0
    for kind, _, _ in recorder.events:  # the I/O thread's own order
        unanswered += {"sent": 1, "result": -1}[kind]
        assert 0 <= unanswered <= credits
    assert server.stats == ServerStats(submitted=10, sent=10, results=10, workers=1)


def test_unanswered_frame_is_given_up_and_its_credit_returned(stream: Stream) -> None:
    server, recorder = stream.server(result_timeout_s=0.3)
    client = stream.client(server.bound_address, "w1", credits=1, heartbeat_s=0.05)
    server.submit(*frame_of(0, position=0))
    first, _ = receive_frame(client)  # never answered

    server.submit(*frame_of(1, position=1))
    second, _ = receive_frame(client)  # heartbeats keep the worker alive meanwhile

    assert (first.frame_index, second.frame_index) == (0, 1)
    assert recorder.of("lost") == [(0, "no result from w1 within 0.3 s")]
    assert server.stats.workers == 1


def test_frame_goes_out_from_submit_when_a_worker_has_a_credit(
    stream: Stream,
) -> None:
    server, recorder = stream.server()
    client = stream.client(server.bound_address, "w1", credits=2)
    assert server.wait_for_worker(TIMEOUT_S)

    server.submit(*frame_of(0, position=0))
    server.submit(*frame_of(1, position=1))
    server.submit(*frame_of(2, position=2))
    stats = server.stats  # before the I/O thread could have sent anything

    assert (stats.sent, stats.in_flight, stats.queue_depth) == (2, 2, 1)
    first, _ = receive_frame(client)
    answer(client, first)
    second, _ = receive_frame(client)
    answer(client, second)
    third, _ = receive_frame(client)  # sent by the I/O thread, for a credit
    answer(client, third)
    recorder.wait_for(lambda: len(recorder.results) == 3, "three results")
    assert [f.frame_index for f in (first, second, third)] == [0, 1, 2]
    for index in range(3):  # each frame reported sent before its result
        events = [e[0] for e in recorder.events if e[1] == index]
        assert events == ["sent", "result"]
    assert server.stats == ServerStats(submitted=3, sent=3, results=3, workers=1)


def test_frame_whose_image_does_not_match_its_header_is_skipped(
    stream: Stream,
) -> None:
    server, recorder = stream.server()
    client = stream.client(server.bound_address)
    assert server.wait_for_worker(TIMEOUT_S)
    frame, _ = frame_of(0)

    server.submit(frame, np.zeros((3, 5), np.uint16))  # header says 24 x 32
    server.submit(*frame_of(1))
    received, _ = receive_frame(client)
    recorder.wait_for(lambda: recorder.of("skipped"), "the skipped frame")

    ((index, reason),) = recorder.of("skipped")
    assert index == 0
    assert "buffer 'image'" in reason
    assert received.frame_index == 1
    stats = server.stats
    assert (stats.submitted, stats.skipped, stats.sent) == (2, 1, 1)


def results_reach(recorder: StreamRecorder, n: int) -> Callable[[], bool]:
    """A predicate for `wait_for`: `n` results recorded."""
    return lambda: len(recorder.results) >= n


def test_results_sent_just_before_the_worker_closes_arrive(stream: Stream) -> None:
    server, recorder = stream.server()
    client = FrameClient(server.bound_address, "w1", credits=4)
    for index in range(4):
        server.submit(*frame_of(index, position=index))
    frames = [receive_frame(client)[0] for _ in range(4)]

    for frame in frames:
        answer(client, frame)
    client.close()  # at once: ZeroMQ still has the results to write
    recorder.wait_for(lambda: len(recorder.results) == 4, "four results")

    assert sorted(i for i, _ in recorder.of("result")) == [0, 1, 2, 3]
    assert server.stats.lost == 0


class FailingRecorder(StreamRecorder):
    """A listener that fails on every frame_sent."""

    def frame_sent(self, frame_index: int, worker_id: str, sent_at: float) -> None:
        super().frame_sent(frame_index, worker_id, sent_at)
        raise RuntimeError("listener bug")


def test_a_failing_listener_does_not_stop_the_stream(stream: Stream) -> None:
    recorder = FailingRecorder()
    LOGGER.addHandler(recorder)
    server = FrameServer(LOOPBACK, recorder)
    try:
        client = stream.client(server.bound_address)
        for index in range(3):
            server.submit(*frame_of(index))
            frame, _ = receive_frame(client)
            answer(client, frame)
            recorder.wait_for(results_reach(recorder, index + 1), "a result")
        assert "stream listener failed" in recorder.wait_for_log("listener failed")
        assert recorder.of("sent") == [(0, "w1"), (1, "w1"), (2, "w1")]
        assert server.stats.results == 3
    finally:
        server.close()
        LOGGER.removeHandler(recorder)


def test_result_for_a_frame_never_sent_is_rejected(stream: Stream) -> None:
    server, recorder = stream.server()
    client = stream.client(server.bound_address)
    server.submit(*frame_of(0))
    frame, _ = receive_frame(client)

    answer(client, frame.model_copy(update={"frame_index": 99}))
    message = recorder.wait_for_log("was not sent")

    assert "frame 99" in message
    assert server.stats.rejected == 1
    assert server.stats.results == 0
    assert server.stats.in_flight == 1


# -- the queue ---------------------------------------------------------------------


def test_newest_frame_per_position_waits_for_a_worker(stream: Stream) -> None:
    server, recorder = stream.server()
    for index in range(5):
        server.submit(*frame_of(index, position=3))
    assert recorder.of("skipped") == [(i, "superseded") for i in range(4)]
    assert server.stats.queue_depth == 1

    client = stream.client(server.bound_address)
    frame, image = receive_frame(client)
    answer(client, frame)
    recorder.wait_for(lambda: recorder.results, "result")

    assert frame.frame_index == 4
    np.testing.assert_array_equal(image, frame_of(4, position=3)[1])
    assert server.stats == ServerStats(
        submitted=5, skipped=4, sent=1, results=1, workers=1
    )


@pytest.mark.parametrize(
    ("positions", "max_queue", "superseded", "queued"),
    [
        pytest.param([0, 1, 2], 16, [], [0, 1, 2], id="distinct-positions"),
        pytest.param([0, 1, 0, 1, 2], 16, [0, 1], [2, 3, 4], id="newest-per-position"),
        pytest.param([0, 1, 2, 3, 4], 3, [0, 1], [2, 3, 4], id="oldest-beyond-max"),
        pytest.param([0, 1, 0, 2, 3], 2, [0, 1, 2], [3, 4], id="both"),
    ],
)
def test_queue_keeps_newest_per_position_and_at_most_max_queue(
    stream: Stream,
    positions: list[int],
    max_queue: int,
    superseded: list[int],
    queued: list[int],
) -> None:
    server, recorder = stream.server(max_queue=max_queue)

    for index, position in enumerate(positions):
        server.submit(*frame_of(index, position))
    depth = server.stats.queue_depth
    stream.close_server(server)

    assert depth == len(queued)
    assert recorder.of("skipped") == [(i, "superseded") for i in superseded] + [
        (i, "run ended") for i in queued
    ]


def test_close_reports_queued_frames_skipped_and_frames_in_flight_lost(
    stream: Stream,
) -> None:
    server, recorder = stream.server()
    client = stream.client(server.bound_address, credits=1)
    server.submit(*frame_of(0, position=0))
    receive_frame(client)  # in flight: its one credit is used
    server.submit(*frame_of(1, position=1))
    server.submit(*frame_of(2, position=2))

    stream.close_server(server)

    assert recorder.of("skipped") == [(1, "run ended"), (2, "run ended")]
    assert recorder.of("lost") == [(0, "no result from w1 before the end")]
    stats = server.stats
    assert (stats.skipped, stats.lost, stats.queue_depth, stats.workers) == (2, 1, 0, 0)


def test_submit_never_blocks_and_the_queue_stays_bounded(stream: Stream) -> None:
    server, recorder = stream.server(max_queue=16)
    frames = [frame_of(i % 50, position=i) for i in range(50)]

    start = time.perf_counter()
    for i in range(1000):
        frame, image = frames[i % 50]
        server.submit(frame.model_copy(update={"frame_index": i, "position": i}), image)
    elapsed = time.perf_counter() - start

    assert elapsed < 5.0  # typically a few ms; no worker is ever waited for
    stats = server.stats
    assert (stats.submitted, stats.skipped, stats.queue_depth) == (1000, 984, 16)
    assert len(recorder.of("skipped")) == 984


# -- either end may start first, fail and come back ---------------------------------


def test_worker_may_start_before_the_controller(stream: Stream) -> None:
    address = free_port_address()
    client = stream.client(address)

    server, _ = stream.server(address)
    server.submit(*frame_of(0))
    frame, _ = receive_frame(client)

    assert frame.frame_index == 0
    assert server.bound_address == address


def drop_silent_worker(stream: Stream) -> tuple[FrameServer, StreamRecorder]:
    """A server whose only worker took frame 0 and then went silent."""
    server, recorder = stream.server(worker_timeout_s=1.0, result_timeout_s=1.0)
    client = stream.client(
        server.bound_address, "w1", credits=1, heartbeat_s=0.1, controller_timeout_s=1
    )
    server.submit(*frame_of(0))
    receive_frame(client)
    client.close()  # no goodbye: the server only notices the silence
    recorder.wait_for(lambda: recorder.of("lost"), "lost frame")
    return server, recorder


def test_silent_worker_is_dropped_and_its_frame_reported_lost(stream: Stream) -> None:
    server, recorder = drop_silent_worker(stream)

    assert recorder.of("lost") == [(0, "no result from w1 within 1 s")]
    assert any("w1 silent for" in m for m in recorder.log)
    stats = server.stats
    assert (stats.sent, stats.lost, stats.in_flight, stats.workers) == (1, 1, 0, 0)


def test_worker_busier_than_its_timeout_still_delivers(stream: Stream) -> None:
    # A long analysis sends nothing; the worker is judged by result_timeout_s.
    server, recorder = stream.server(worker_timeout_s=0.3, result_timeout_s=10.0)
    client = stream.client(server.bound_address, "w1", credits=1, heartbeat_s=0.1)
    server.submit(*frame_of(0))
    frame, _ = receive_frame(client)
    busy = threading.Event()

    busy.wait(1.0)  # the analysis: three worker timeouts without a word
    answer(client, frame)
    recorder.wait_for(lambda: recorder.results, "result")

    assert recorder.of("lost") == []
    assert server.stats.results == 1


def test_worker_that_comes_back_gets_frames_again(stream: Stream) -> None:
    server, recorder = drop_silent_worker(stream)
    client = stream.client(
        server.bound_address, "w1", heartbeat_s=0.1, controller_timeout_s=1
    )

    server.submit(*frame_of(1))
    frame, _ = receive_frame(client)
    answer(client, frame)
    recorder.wait_for(lambda: recorder.results, "result")

    assert frame.frame_index == 1
    assert recorder.of("result") == [(1, "w1")]
    assert server.stats.workers == 1


def test_worker_reconnects_when_the_controller_comes_back(stream: Stream) -> None:
    address = free_port_address()
    first, _ = stream.server(address)
    client = stream.client(address, heartbeat_s=0.1, controller_timeout_s=0.5)
    first.submit(*frame_of(0))
    receive_frame(client)
    stream.close_server(first)

    deadline = time.monotonic() + TIMEOUT_S
    while client.reconnects == 0 and time.monotonic() < deadline:
        assert client.receive(timeout_s=0.1) is None
    second, recorder = stream.server(address)
    second.submit(*frame_of(1))
    frame, _ = receive_frame(client)
    answer(client, frame)
    recorder.wait_for(lambda: recorder.results, "result")

    assert client.reconnects >= 1
    assert frame.frame_index == 1
    assert recorder.of("result") == [(1, "w1")]


# -- bad messages and bad addresses --------------------------------------------------

HEARTBEAT = {"protocol": 1, "kind": "heartbeat", "sender": "rogue", "time_s": 0.0}
HELLO = {"protocol": 1, "kind": "hello", "worker_id": "rogue"}


@pytest.mark.parametrize(
    ("parts", "reason"),
    [
        pytest.param([b"\x80\x04garbage"], "not JSON", id="not-json"),
        pytest.param([b""], "not JSON", id="empty-part"),
        pytest.param([b"[" * 200_000], "not JSON", id="deeply-nested-json"),
        pytest.param(
            [json.dumps(HEARTBEAT | {"protocol": 2}).encode()],
            "unknown protocol version 2",
            id="protocol-2",
        ),
        pytest.param(
            [json.dumps(HELLO).encode(), b"\x00" * 8],
            "declares 0 buffers, 1 followed",
            id="wrong-buffer-count",
        ),
        pytest.param(
            [json.dumps(HELLO | {"credits": 1000}).encode()],
            "hello.credits",
            id="too-many-credits",
        ),
        pytest.param(
            [json.dumps(HEARTBEAT).encode()], "unknown worker (no hello)", id="no-hello"
        ),
    ],
)
def test_bad_message_is_rejected_and_the_server_keeps_serving(
    stream: Stream, parts: list[bytes], reason: str
) -> None:
    server, recorder = stream.server()
    rogue = stream.raw_dealer(server.bound_address)

    rogue.send_multipart(parts)
    message = recorder.wait_for_log("rejected message")
    client = stream.client(server.bound_address)
    server.submit(*frame_of(0))
    frame, _ = receive_frame(client)
    answer(client, frame)
    recorder.wait_for(lambda: recorder.results, "result")

    assert reason in message
    assert server.stats == ServerStats(
        submitted=1, sent=1, results=1, rejected=1, workers=1
    )


@pytest.mark.parametrize(
    "address",
    [
        "tcp://0.0.0.0:5555",
        "tcp://*:5555",
        "tcp://192.168.1.20:5555",
        "tcp://[::]:5555",
        "tcp://example.org:5555",
        "udp://127.0.0.1:5555",
    ],
)
def test_listening_beyond_loopback_is_refused(address: str) -> None:
    with pytest.raises(ConfigError, match="CURVE"):
        FrameServer(address, StreamRecorder())


@pytest.mark.parametrize(
    "address",
    ["tcp://127.0.0.1:0", "tcp://localhost:0", "ipc"],
    ids=["127.0.0.1", "localhost", "ipc"],
)
def test_loopback_and_local_addresses_are_accepted(
    stream: Stream, tmp_path: Path, address: str
) -> None:
    if address == "ipc":
        address = f"ipc://{tmp_path / 'stream.sock'}"

    server, _ = stream.server(address)
    client = stream.client(server.bound_address)
    server.submit(*frame_of(0))

    assert receive_frame(client)[0].frame_index == 0
