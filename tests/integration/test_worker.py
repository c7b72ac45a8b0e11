"""The worker's pipeline and serving loop over real ZeroMQ sockets.

The networks are stand-ins with the same interfaces (`Smooth`, `Threshold`,
`Brightness`): cheap classical versions, so that these tests check the wiring
(batching, per-position tracks, error results, restarts, result messages),
not the models; the models have their own tests.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

import numpy as np
import pytest
from scipy import ndimage

from scopeloop.protocol import ArraySpec, FrameMessage, FrameServer, ResultMessage
from scopeloop.worker import FrameInput, Pipeline, serve

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

TIMEOUT_S = 10.0


class Smooth:
    sha256 = "smooth"

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        return ndimage.uniform_filter(frames.astype(np.float32), (0, 3, 3))


class Threshold:
    sha256 = "threshold"

    def __call__(self, images: np.ndarray) -> np.ndarray:
        out = np.zeros(images.shape, np.uint32)
        for k, image in enumerate(images):
            out[k] = ndimage.label(image > image.mean() + 2 * image.std())[0]
        return out


class Brightness:
    """Score = 1 for nuclei brighter than 150 (our 'mitotic' discs)."""

    sha256 = "brightness"
    window = 2

    def __call__(
        self, history: Sequence[np.ndarray], labels: np.ndarray
    ) -> dict[int, float]:
        image = history[-1]
        ids = np.unique(labels)[1:]
        means = ndimage.mean(image, labels, ids)
        return {int(i): float(m > 150) for i, m in zip(ids, means, strict=True)}


def scene(
    discs: list[tuple[float, float, float]], shape: tuple[int, int] = (64, 64)
) -> np.ndarray:
    """uint16 image: offset 100, discs (y, x, brightness) of radius 5."""
    yy, xx = np.indices(shape)
    image = np.full(shape, 100.0)
    for y, x, b in discs:
        image[(yy - y) ** 2 + (xx - x) ** 2 <= 25] += b
    return image.astype(np.uint16)


@pytest.fixture
def pipeline() -> Pipeline:
    return Pipeline(Smooth(), Threshold(), Brightness())


def test_pipeline_measures_and_tracks_each_position_apart(pipeline: Pipeline) -> None:
    a0 = scene([(20, 20, 30), (40, 45, 30)])
    b0 = scene([(30, 30, 30)])
    out = pipeline.process(
        [FrameInput(0, 0, a0, t_index=0), FrameInput(1, 1, b0, t_index=0)]
    )
    assert [o.error for o in out] == [None, None]
    assert len(out[0].nuclei) == 2
    assert len(out[1].nuclei) == 1
    first = out[0].nuclei[0]
    assert (first.y, first.x) == pytest.approx((20, 20), abs=0.5)
    assert first.area_px == pytest.approx(81, abs=10)
    assert out[0].labels is not None and out[0].restored is not None
    assert out[0].restored.dtype == np.float32
    assert set(np.unique(out[0].labels)) == {0} | {n.id for n in out[0].nuclei}
    assert set(out[0].timings_ms) >= {
        "denoise_ms",
        "labels_ms",
        "mitosis_ms",
        "track_ms",
    }
    # Next frame at position 0: nuclei moved a little and keep their ids.
    (again,) = pipeline.process(
        [FrameInput(0, 2, scene([(21, 21, 30), (40, 46, 30)]), 1)]
    )
    assert sorted(n.id for n in again.nuclei) == sorted(n.id for n in out[0].nuclei)


def test_pipeline_reports_a_division_of_a_bright_nucleus(pipeline: Pipeline) -> None:
    pipeline.process([FrameInput(0, 0, scene([(30, 30, 30), (10, 50, 30)]), 0)])
    pipeline.process([FrameInput(0, 1, scene([(30, 30, 100), (10, 50, 30)]), 1)])
    (split,) = pipeline.process(
        [FrameInput(0, 2, scene([(30, 24, 100), (30, 37, 100), (10, 50, 30)]), 2)]
    )
    assert len(split.divisions) == 1
    division = split.divisions[0]
    assert (division.y, division.x) == pytest.approx((30, 30.5), abs=1)
    ids = {n.id for n in split.nuclei}
    assert set(division.daughter_ids) <= ids
    assert division.mother_id not in ids


@pytest.mark.parametrize(
    ("image", "message"),
    [
        (np.full((32, 32), np.nan, np.float32), "NaN"),
        (np.zeros((4, 32, 32), np.uint16), "2-D"),
        (np.zeros((32, 32), bool), "dtype"),
        (np.zeros((3, 3), np.uint16), "too small"),
    ],
    ids=["nan", "3d", "bool", "tiny"],
)
def test_bad_frames_get_an_error_and_the_rest_of_the_batch_is_analysed(
    pipeline: Pipeline, image: np.ndarray, message: str
) -> None:
    out = pipeline.process(
        [FrameInput(0, 0, image), FrameInput(1, 1, scene([(30, 30, 40)]))]
    )
    assert out[0].error is not None and message in out[0].error
    assert out[0].nuclei == () and out[0].labels is None
    assert out[1].error is None and len(out[1].nuclei) == 1


class Controller:
    """A `FrameServer` on loopback collecting every result it gets."""

    def __init__(self, result_timeout_s: float = TIMEOUT_S) -> None:
        self.results: list[tuple[ResultMessage, list[np.ndarray]]] = []
        self.lost: list[int] = []
        self.lock = threading.Condition()
        self.server = FrameServer(
            "tcp://127.0.0.1:*",
            listener=self,
            worker_timeout_s=result_timeout_s,
            result_timeout_s=result_timeout_s,
        )

    # listener
    def frame_sent(self, frame_index: int, worker_id: str, sent_at: float) -> None:
        pass

    def frame_skipped(self, frame_index: int, reason: str) -> None:
        pass

    def frame_lost(self, frame_index: int, reason: str) -> None:
        with self.lock:
            self.lost.append(frame_index)
            self.lock.notify_all()

    def result_received(
        self, result: ResultMessage, arrays: list[np.ndarray], at: float
    ) -> None:
        with self.lock:
            self.results.append((result, arrays))
            self.lock.notify_all()

    def wait_for(self, n: int) -> None:
        with self.lock:
            assert self.lock.wait_for(lambda: len(self.results) >= n, TIMEOUT_S)

    def wait_for_fate(self, index: int) -> None:
        """Until frame `index` was answered or given up."""

        def known() -> bool:
            answered = any(r.frame_index == index for r, _ in self.results)
            return answered or index in self.lost

        with self.lock:
            assert self.lock.wait_for(known, TIMEOUT_S)

    def submit(self, index: int, position: int, image: np.ndarray) -> None:
        header = FrameMessage(
            frame_index=index,
            position=position,
            t_index=index,
            time_s=float(index),
            exposure_ms=10.0,
            laser_power_mw=1.0,
            pixel_size_um=0.5,
            buffers=(ArraySpec.of("image", image),),
        )
        self.server.submit(header, image)


@pytest.fixture
def controller() -> Iterator[Controller]:
    c = Controller()
    yield c
    c.server.close()


def start_worker(
    address: str, pipeline: Pipeline, **options: object
) -> tuple[threading.Thread, threading.Event, list[object]]:
    stop = threading.Event()
    box: list[object] = []

    def run() -> None:
        box.append(serve(address, pipeline, stop=stop, **options))  # type: ignore[arg-type]

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, stop, box


def test_worker_answers_every_frame_with_tables_and_images(
    controller: Controller, pipeline: Pipeline
) -> None:
    thread, stop, box = start_worker(
        controller.server.bound_address, pipeline, credits=2, max_batch=3
    )
    try:
        assert controller.server.wait_for_worker(TIMEOUT_S)
        # Two positions, one frame each per round (the queue keeps only the
        # newest frame of a position, so a round waits for its results).
        for i in range(6):
            controller.submit(i, i % 2, scene([(20 + i, 20, 40), (45, 40, 40)]))
            if i % 2:
                controller.wait_for(i + 1)
    finally:
        stop.set()
        thread.join(TIMEOUT_S)
    assert not thread.is_alive()
    by_frame = {r.frame_index: (r, arrays) for r, arrays in controller.results}
    assert sorted(by_frame) == list(range(6))
    for i, (result, arrays) in by_frame.items():
        assert result.error is None
        assert result.position == i % 2
        assert len(result.nuclei) == 2
        assert [b.name for b in result.buffers] == ["restored", "labels"]
        restored, labels = arrays
        assert restored.shape == labels.shape == (64, 64)
        assert {n.id for n in result.nuclei} == set(np.unique(labels)) - {0}
    # Each position's tracks are its own: same ids over time within a position.
    ids_p0 = [sorted(n.id for n in by_frame[i][0].nuclei) for i in (0, 2, 4)]
    assert ids_p0[0] == ids_p0[1] == ids_p0[2]
    (stats,) = box
    assert stats.frames == 6  # type: ignore[attr-defined]


def test_a_bad_frame_gets_an_error_result_and_the_worker_goes_on(
    controller: Controller, pipeline: Pipeline
) -> None:
    thread, stop, _ = start_worker(controller.server.bound_address, pipeline)
    try:
        assert controller.server.wait_for_worker(TIMEOUT_S)
        controller.submit(0, 0, np.full((64, 64), np.nan, np.float32))
        controller.wait_for(1)
        controller.submit(1, 0, scene([(30, 30, 40)]))
        controller.wait_for(2)
    finally:
        stop.set()
        thread.join(TIMEOUT_S)
    results = {r.frame_index: r for r, _ in controller.results}
    assert results[0].error is not None and "NaN" in results[0].error
    assert results[0].buffers == ()
    assert results[1].error is None and len(results[1].nuclei) == 1


def test_a_worker_restarted_mid_stream_resumes() -> None:
    controller = Controller(result_timeout_s=1.0)
    address = controller.server.bound_address
    try:
        first, _, _ = start_worker(
            address, Pipeline(Smooth(), Threshold(), Brightness()), max_frames=2
        )
        assert controller.server.wait_for_worker(TIMEOUT_S)
        for i in range(2):
            controller.submit(i, 0, scene([(30, 30, 40)]))
            controller.wait_for(i + 1)
        first.join(TIMEOUT_S)
        assert not first.is_alive()  # the first worker has gone, without a word
        second, stop, box = start_worker(
            address, Pipeline(Smooth(), Threshold(), Brightness())
        )
        try:
            # Frames sent to the vanished worker are given up after the
            # result timeout; the new worker answers the others.
            index = 2
            while len(box) == 0 and index < 20:
                controller.submit(index, 0, scene([(30, 30, 40)]))
                controller.wait_for_fate(index)
                index += 1
                if (
                    sum(
                        r.worker_id != controller.results[0][0].worker_id
                        for r, _ in controller.results
                    )
                    >= 3
                ):
                    break
        finally:
            stop.set()
            second.join(TIMEOUT_S)
    finally:
        controller.server.close()
    workers = [r.worker_id for r, _ in controller.results]
    assert len(set(workers)) == 2
    assert workers.count(workers[-1]) >= 3
    assert len(controller.results) + len(controller.lost) == index
    assert all(r.error is None for r, _ in controller.results)
