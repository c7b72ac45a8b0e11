"""`run_session` on the simulated rig: raw frames, the ledger, the stream, results.

Every run uses the real demo.cfg, real ZeroMQ sockets on loopback and a real
run folder. Workers are stand-ins (`Receiver`): a thread with a `FrameClient`
that answers each frame with made-up nuclei, a division and two images.
"""

from __future__ import annotations

import _thread
import csv
import hashlib
import json
import signal
import socket
import threading
import xml.etree.ElementTree as ET
from collections import Counter
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest
import tifffile

from addresses import free_address
from scopeloop.config import SessionPlan
from scopeloop.controller import FRAME_COLUMNS, EventSource, RunStatus, run_session
from scopeloop.errors import ConfigError, DeviceError
from scopeloop.hardware import default_config
from scopeloop.protocol import (
    ArraySpec,
    DivisionEvent,
    FrameClient,
    NucleusRecord,
    ResultMessage,
)

if TYPE_CHECKING:
    from pathlib import Path

    import useq

    from scopeloop.controller import RunSummary

TIMEOUT_S = 10.0
OME = "{http://www.openmicroscopy.org/Schemas/OME/2016-06}"
POSITIONS = [
    {"name": "left", "x_um": -300.0, "y_um": 0.0},
    {"name": "right", "x_um": 300.0, "y_um": 100.0},
    {"name": "low", "x_um": 0.0, "y_um": -250.0},
]
RESULT_SIDE = 32


def make_plan(
    *,
    frames: int = 3,
    interval_s: float = 0.1,
    positions: int = 2,
    binning: int = 1,
    stream: dict[str, Any] | None = None,
    **fields: Any,
) -> SessionPlan:
    return SessionPlan.model_validate(
        {
            "name": "test",
            "positions": POSITIONS[:positions],
            "illumination": {"exposure_ms": 10, "laser_power_mw": 2.5},
            "time": {"interval_s": interval_s, "frames": frames},
            "properties": [
                {"device": "SimHub", "property": "SpeedUp", "value": 600},
                {"device": "Camera", "property": "Binning", "value": binning},
            ],
            "stream": {"drain_s": 2.0, **(stream or {})},
            **fields,
        }
    )


def read_rows(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        rows = list(reader)
        return list(reader.fieldnames or []), rows


def raw_planes(folder: Path) -> tuple[tuple[int, ...], str, list[dict[str, str]]]:
    """(planes, Y, X) and axes of the raw file's one series, and its OME Planes."""
    with tifffile.TiffFile(folder / "raw.ome.tiff") as tf:
        assert len(tf.series) == 1
        series = tf.series[0]
        data = series.asarray()
        root = ET.fromstring(tf.ome_metadata or "")
    planes = [dict(p.attrib) for p in root.iter(f"{OME}Plane")]
    return data.reshape(-1, *data.shape[-2:]).shape, series.axes, planes


def states(rows: list[dict[str, str]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for row in rows:
        out[row["stream"]] = out.get(row["stream"], 0) + 1
    return out


class Receiver:
    """A stand-in worker on its own thread, answering every frame it gets.

    `hold_s`: how long it sits on each frame before answering. `die_after`: it
    closes its socket, without a word, on the frame after that many answers.
    """

    def __init__(
        self,
        address: str,
        *,
        credits: int = 2,
        hold_s: float = 0.0,
        die_after: int | None = None,
        heartbeat_s: float = 0.5,
    ) -> None:
        self.address = address
        self.credits = credits
        self.hold_s = hold_s
        self.die_after = die_after
        self.heartbeat_s = heartbeat_s
        self.answered: list[int] = []
        self.dead = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="test-receiver")

    def __enter__(self) -> Receiver:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    @property
    def started(self) -> bool:
        return self._thread.ident is not None

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self.started:
            self._thread.join(TIMEOUT_S)
            assert not self._thread.is_alive()

    def _run(self) -> None:
        client = FrameClient(
            self.address,
            "test-worker",
            credits=self.credits,
            heartbeat_s=self.heartbeat_s,
        )
        try:
            while not self._stop.is_set():
                got = client.receive(timeout_s=0.05)
                if got is None:
                    continue
                frame, image = got
                if self.die_after is not None and len(self.answered) >= self.die_after:
                    self.dead.set()
                    return  # closes the socket with the frame unanswered
                if self.hold_s:
                    self._stop.wait(self.hold_s)
                result, arrays = self.answer(frame.frame_index, frame.position, image)
                client.send_result(result, arrays)
                self.answered.append(frame.frame_index)
        finally:
            client.close()

    @staticmethod
    def answer(
        frame_index: int, position: int, image: np.ndarray
    ) -> tuple[ResultMessage, list[np.ndarray]]:
        step = image.shape[0] // RESULT_SIDE
        restored = image[::step, ::step][:RESULT_SIDE, :RESULT_SIDE].astype(np.float32)
        labels = np.zeros((RESULT_SIDE, RESULT_SIDE), np.uint32)
        labels[2:6, 2:6] = 1
        labels[10:14, 20:24] = 2
        result = ResultMessage(
            frame_index=frame_index,
            position=position,
            worker_id="test-worker",
            timings_ms={"total": 1.0},
            nuclei=(
                NucleusRecord(id=1, y=4, x=4, area_px=16, mean_intensity=100.0),
                NucleusRecord(
                    id=2, y=12, x=22, area_px=16, mean_intensity=90, mitosis_score=0.9
                ),
            ),
            divisions=(
                DivisionEvent(y=12, x=22, mother_id=2, daughter_ids=(3, 4), score=0.8),
            ),
            buffers=(
                ArraySpec.of("restored", restored),
                ArraySpec.of("labels", labels),
            ),
        )
        return result, [restored, labels]


# -- acquisition without a worker ---------------------------------------------


def test_run_without_worker_keeps_every_frame_and_the_provenance(
    tmp_path: Path,
) -> None:
    # Arrange
    plan = make_plan(frames=3, positions=3, interval_s=0.1)
    out = tmp_path / "run"
    config = default_config()

    # Act
    summary = run_session(config, plan, out=out, worker="none")

    # Assert: the ledger has one row per frame, none streamed.
    columns, rows = read_rows(out / "frames.csv")
    assert columns == list(FRAME_COLUMNS)
    assert len(rows) == summary.frames == 9
    assert [int(r["index"]) for r in rows] == list(range(9))
    assert [(r["t"], r["position_name"]) for r in rows] == [
        (str(t), p["name"]) for t in range(3) for p in POSITIONS
    ]
    assert {r["stream"] for r in rows} == {"not streamed"}
    assert summary.stream_states == {"not streamed": 9}
    assert summary.finish_reason == "completed"
    assert summary.positions == 3
    # ...and the raw file one plane per row, at the row's stage position.
    shape, axes, planes = raw_planes(out)
    assert axes == "TYX"
    assert shape == (9, 512, 512)
    assert len(planes) == len(rows)
    where = {p["name"]: (p["x_um"], p["y_um"]) for p in POSITIONS}
    for plane, row in zip(planes, rows, strict=True):
        assert "DeltaT" in plane
        x, y = where[row["position_name"]]
        assert float(plane["PositionX"]) == pytest.approx(x)
        assert float(plane["PositionY"]) == pytest.approx(y)
    delta_t = [float(p["DeltaT"]) for p in planes]
    assert delta_t == sorted(delta_t)
    # The dose is the sum over frames of power x exposure.
    expected_dose = sum(
        float(r["laser_power_mw"]) * float(r["exposure_ms"]) / 1000 for r in rows
    )
    assert expected_dose == pytest.approx(9 * 2.5 * 10 / 1000)
    assert summary.delivered_dose_mj == pytest.approx(expected_dose)
    # run.json says what ran, on what, with what.
    record = json.loads((out / "run.json").read_text())
    assert record["plan"] == plan.model_copy(
        update={"stream": plan.stream.model_copy(update={"worker": "none"})}
    ).model_dump(mode="json")
    assert record["config"]["sha256"] == hashlib.sha256(config.read_bytes()).hexdigest()
    assert {"scopeloop", "pymmcore-plus", "useq-schema", "ome-writers"} <= set(
        record["versions"]
    )
    assert record["finish"]["reason"] == "completed"
    assert [p["name"] for p in record["positions"]] == [p["name"] for p in POSITIONS]
    assert [(p["x_um"], p["y_um"]) for p in record["positions"]] == [
        (p["x_um"], p["y_um"]) for p in POSITIONS
    ]
    assert record["summary"]["frames"] == 9
    assert record["summary"]["delivered_dose_mj"] == pytest.approx(expected_dose)
    assert "stream" not in record
    # No worker, no results: the tables are there, empty.
    for table in ("nuclei", "divisions", "images"):
        assert read_rows(out / "results" / f"{table}.csv")[1] == []


def test_channel_and_z_stack_reach_the_ledger_and_the_raw_file(
    tmp_path: Path,
) -> None:
    plan = make_plan(
        frames=2,
        positions=2,
        interval_s=0.05,
        illumination={
            "exposure_ms": 10,
            "laser_power_mw": 2.5,
            "channel_group": "Channel",
            "channel": "GFP",
        },
        z={"planes": 3, "step_um": 1.5},
    )
    out = tmp_path / "run"

    summary = run_session(default_config(), plan, out=out, worker="none")

    _, rows = read_rows(out / "frames.csv")
    assert summary.frames == len(rows) == 2 * 2 * 3
    assert [(r["t"], r["position"], r["z"]) for r in rows] == [
        (str(t), str(p), str(z)) for t in range(2) for p in range(2) for z in range(3)
    ]
    shape, _, planes = raw_planes(out)
    assert shape[0] == len(planes) == len(rows)
    focus = [float(p["PositionZ"]) for p in planes[:3]]
    assert np.diff(focus) == pytest.approx([1.5, 1.5])


# -- a worker on the stream ---------------------------------------------------


def test_results_of_a_worker_are_written_down(tmp_path: Path) -> None:
    # Arrange
    address = free_address()
    plan = make_plan(frames=4, positions=2, interval_s=0.1)
    out = tmp_path / "run"

    # Act
    with Receiver(address) as receiver:
        summary = run_session(default_config(), plan, out=out, worker=address)

    # Assert: frames answered are analysed, with a latency; nothing is left open.
    _, rows = read_rows(out / "frames.csv")
    assert len(rows) == summary.frames == 8
    assert set(states(rows)) <= {"analysed", "skipped"}
    analysed = [r for r in rows if r["stream"] == "analysed"]
    assert len(analysed) >= 4
    assert sorted(int(r["index"]) for r in analysed) == sorted(receiver.answered)
    for row in analysed:
        assert row["worker"] == "test-worker"
        assert float(row["latency_ms"]) > 0
    assert summary.results == len(analysed)
    assert summary.stream_states == states(rows)
    assert summary.latency_p50_ms is not None
    assert summary.rejected_messages == 0
    # ...and their results are in results/.
    results = out / "results"
    _, nuclei = read_rows(results / "nuclei.csv")
    _, divisions = read_rows(results / "divisions.csv")
    _, images = read_rows(results / "images.csv")
    assert len(nuclei) == 2 * len(analysed)
    assert len(divisions) == len(analysed)
    assert {d["daughter_ids"] for d in divisions} == {"3;4"}
    assert len(images) == 2 * len(analysed)
    assert {r["frame_index"] for r in nuclei} == {r["index"] for r in analysed}
    per_position = Counter(r["position"] for r in analysed)
    names = {r["position"]: r["position_name"] for r in analysed}
    for kind, dtype in (("restored", np.uint16), ("labels", np.uint32)):
        entries = [r for r in images if r["image"] == kind]
        assert Counter(r["position"] for r in entries) == per_position
        files = sorted((results / kind).glob("*.ome.tiff"))
        assert len(files) == len(per_position)
        for position, count in per_position.items():
            stack = tifffile.imread(
                results / kind / f"{kind}_{names[position]}.ome.tiff"
            )
            assert stack.dtype == dtype
            assert stack.reshape(-1, RESULT_SIDE, RESULT_SIDE).shape[0] == count
            assert sorted(
                int(r["stack_index"]) for r in entries if r["position"] == position
            ) == list(range(count))
    record = json.loads((out / "run.json").read_text())
    assert record["stream"]["address"] == address
    assert record["stream_stats"]["results"] == len(analysed)


def visit_period_s(rows: list[dict[str, str]]) -> float:
    """Median time between visits of a position: the pace of the acquisition."""
    times: dict[str, list[float]] = {}
    for row in rows:
        times.setdefault(row["position"], []).append(float(row["time_s"]))
    return float(np.median(np.concatenate([np.diff(t) for t in times.values()])))


def test_slow_worker_never_slows_acquisition(tmp_path: Path) -> None:
    # Arrange: a worker that needs 0.3 s per frame; each position is due every
    # 0.1 s. Waiting for that worker would take 3x as long as the plan. (Small
    # frames keep the acquisition on schedule on a busy 2-core machine.)
    address = free_address()
    plan = make_plan(
        frames=15, positions=2, interval_s=0.1, binning=4, stream={"drain_s": 1}
    )
    alone = run_session(default_config(), plan, out=tmp_path / "alone", worker="none")

    # Act
    with Receiver(address, credits=1, hold_s=0.3):
        summary = run_session(
            default_config(), plan, out=tmp_path / "streamed", worker=address
        )

    # Assert: the same frames at the same pace as without a worker (the median
    # visit period is immune to a scheduling hiccup of a busy 2-core machine;
    # the overall rate includes the first frame's set-up)...
    _, rows = read_rows(tmp_path / "streamed" / "frames.csv")
    _, alone_rows = read_rows(tmp_path / "alone" / "frames.csv")
    assert summary.frames == alone.frames == len(rows) == 30
    assert visit_period_s(alone_rows) == pytest.approx(0.1, rel=0.15)
    assert visit_period_s(rows) == pytest.approx(visit_period_s(alone_rows), rel=0.15)
    assert summary.frames_per_s == pytest.approx(alone.frames_per_s, rel=0.15)
    # ...and the frames the worker could not take were skipped for newer ones.
    counts = states(rows)
    assert set(counts) <= {"analysed", "skipped", "lost"}
    assert sum(counts.values()) == 30
    assert counts["analysed"] > 0
    assert counts["skipped"] > 0
    reasons = {r["reason"] for r in rows if r["stream"] == "skipped"}
    assert "superseded" in reasons
    assert reasons <= {"superseded", "run ended"}
    assert summary.stream_states == counts


def test_worker_killed_mid_run_loses_no_raw_frame(tmp_path: Path) -> None:
    # Arrange: a worker that vanishes after answering 4 frames.
    address = free_address()
    plan = make_plan(
        frames=30,
        positions=1,
        interval_s=0.05,
        binning=4,
        stream={"worker_timeout_s": 0.5, "drain_s": 0.5},
    )
    out = tmp_path / "run"

    # Act
    with Receiver(address, credits=1, die_after=4, heartbeat_s=0.1) as receiver:
        summary = run_session(default_config(), plan, out=out, worker=address)

    # Assert: every planned frame is on disk and in the ledger...
    assert receiver.dead.is_set()
    _, rows = read_rows(out / "frames.csv")
    shape, _, planes = raw_planes(out)
    assert summary.finish_reason == "completed"
    assert summary.frames == len(rows) == shape[0] == len(planes) == 30
    # ...those answered analysed, every later one skipped or lost, none pending.
    assert len(receiver.answered) == 4
    last_answered = max(receiver.answered)
    by_index = {int(r["index"]): r for r in rows}
    assert {i for i, r in by_index.items() if r["stream"] == "analysed"} == set(
        receiver.answered
    )
    after = [r for i, r in by_index.items() if i > last_answered]
    assert after
    assert {r["stream"] for r in after} <= {"skipped", "lost"}
    assert set(states(rows)) <= {"analysed", "skipped", "lost"}
    assert all(r["reason"] for r in after)


def test_worker_that_connects_late_still_gets_frames(tmp_path: Path) -> None:
    # Arrange: the worker starts only once the run has acquired 3 frames.
    address = free_address()
    plan = make_plan(frames=12, positions=1, interval_s=0.1)
    receiver = Receiver(address)

    def on_tick(status: RunStatus) -> None:
        if status.frames >= 3 and not receiver.started:
            receiver.start()

    # Act
    try:
        summary = run_session(
            default_config(),
            plan,
            out=tmp_path / "run",
            worker=address,
            on_tick=on_tick,
        )
    finally:
        receiver.stop()

    # Assert
    _, rows = read_rows(tmp_path / "run" / "frames.csv")
    fates = [(r["stream"], r["reason"], r["worker"]) for r in rows]
    assert receiver.started
    assert len(rows) == summary.frames == 12
    assert fates[0] == ("skipped", "superseded", ""), fates
    analysed = [int(r["index"]) for r in rows if r["stream"] == "analysed"]
    assert analysed, fates
    assert min(analysed) >= 2
    assert sorted(analysed) == sorted(receiver.answered)
    assert set(states(rows)) <= {"analysed", "skipped"}, fates


def test_run_can_wait_for_a_worker_before_the_first_frame(tmp_path: Path) -> None:
    # Arrange: the worker starts a moment after the stream is up.
    address = free_address()
    plan = make_plan(
        frames=4, positions=1, interval_s=0.1, stream={"wait_for_worker_s": 10}
    )
    receiver = Receiver(address)
    starter = threading.Timer(0.5, receiver.start)

    # Act
    starter.start()
    try:
        run_session(default_config(), plan, out=tmp_path / "run", worker=address)
    finally:
        starter.join()
        receiver.stop()

    # Assert: no frame went by before the worker was there.
    _, rows = read_rows(tmp_path / "run" / "frames.csv")
    assert [r["stream"] for r in rows] == ["analysed"] * 4
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    assert record["stream"]["worker_connected_before_start"] is True


# -- refusals and interruptions ------------------------------------------------


@pytest.mark.parametrize(
    ("illumination", "properties", "words"),
    [
        pytest.param(
            {"laser_device": "NoLaser"},
            [],
            ["laser_device", "'NoLaser'"],
            id="no-laser",
        ),
        pytest.param(
            {"laser_property": "Watts"}, [], ["laser_property", "'Watts'"], id="no-prop"
        ),
        pytest.param(
            {"channel_group": "Channel", "channel": "DAPI"},
            [],
            ["illumination.channel", "'DAPI'"],
            id="undefined-channel",
        ),
        pytest.param(
            {"laser_power_mw": 150},
            [],
            ["laser_power_mw", "150", "100"],
            id="power-above-max",
        ),
        pytest.param(
            {},
            [{"device": "Turret", "property": "Position", "value": 2}],
            ["properties", "Turret.Position"],
            id="unknown-device",
        ),
        pytest.param(
            {},
            [{"device": "SimHub", "property": "SpeedUp", "value": -5}],
            ["properties", "SimHub.SpeedUp", "-5"],
            id="refused-value",
        ),
    ],
)
def test_plan_the_rig_cannot_carry_out_is_refused_before_any_frame(
    tmp_path: Path,
    illumination: dict[str, Any],
    properties: list[dict[str, Any]],
    words: list[str],
) -> None:
    plan = SessionPlan.model_validate(
        {
            "illumination": illumination,
            "time": {"interval_s": 0.1, "frames": 2},
            "properties": properties,
            "output": {"root": str(tmp_path / "runs")},
            "budget": {"max_power_mw": 1000},  # the rig's own limit is checked
        }
    )
    out = tmp_path / "run"

    with pytest.raises(ConfigError) as info:
        run_session(default_config(), plan, out=out, worker="none")

    for word in words:
        assert word in str(info.value)
    assert not out.exists()
    assert not (tmp_path / "runs").exists()


def scopeloop_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("scopeloop")]


def test_busy_address_is_refused_before_the_run_folder(tmp_path: Path) -> None:
    # Arrange: something else already listens on the address.
    out = tmp_path / "run"
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        address = f"tcp://127.0.0.1:{other.getsockname()[1]}"

        # Act
        with pytest.raises(ConfigError, match="cannot listen") as info:
            run_session(default_config(), make_plan(frames=1), out=out, worker=address)

    # Assert
    assert address in str(info.value)
    assert not out.exists()
    assert scopeloop_threads() == []


def test_run_folder_in_use_is_refused_and_the_stream_closed(tmp_path: Path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / "keep.txt").write_text("an earlier run")

    with pytest.raises(ConfigError, match="not empty"):
        run_session(
            default_config(), make_plan(frames=1), out=out, worker=free_address()
        )

    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    assert scopeloop_threads() == []


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_error_in_the_runner_fails_the_run_and_keeps_what_was_acquired(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Arrange: the event source breaks down on the third visit (on the runner's
    # thread, which re-raises there: hence the ignored warning).
    visit = EventSource._visit

    def failing_visit(source: EventSource, p: int, *args: Any) -> list[useq.MDAEvent]:
        if sum(source.visits) >= 4:
            raise RuntimeError("the stage caught fire")
        return visit(source, p, *args)

    monkeypatch.setattr(EventSource, "_visit", failing_visit)
    plan = make_plan(frames=5, positions=1, interval_s=0.05)
    out = tmp_path / "run"

    # Act
    with pytest.raises(DeviceError, match="acquisition failed"):
        run_session(default_config(), plan, out=out, worker="none")

    # Assert: not reported as completed; what was acquired is complete.
    record = json.loads((out / "run.json").read_text())
    assert record["finish"]["reason"] == "error"
    assert record["summary"]["finish_reason"] == "error"
    _, rows = read_rows(out / "frames.csv")
    shape, _, planes = raw_planes(out)
    assert 1 <= len(rows) <= 4  # the runner may look an event ahead
    assert shape[0] == len(planes) == len(rows)


def test_ctrl_c_cancels_and_keeps_what_was_acquired(tmp_path: Path) -> None:
    if signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        pytest.skip("SIGINT is handled elsewhere; interrupt_main would not raise")
    # Arrange: a long plan, interrupted from the progress callback.
    plan = make_plan(frames=1000, positions=2, interval_s=0.05)
    out = tmp_path / "run"
    interrupted = threading.Event()

    def on_tick(status: RunStatus) -> None:
        if status.frames >= 5 and not interrupted.is_set():
            interrupted.set()
            _thread.interrupt_main()

    # Act
    summary: RunSummary = run_session(
        default_config(), plan, out=out, worker="none", on_tick=on_tick
    )

    # Assert
    assert interrupted.is_set()
    assert summary.finish_reason == "cancelled"
    assert 5 <= summary.frames < 2000
    _, rows = read_rows(out / "frames.csv")
    shape, _, planes = raw_planes(out)
    assert shape[0] == len(planes) == len(rows) == summary.frames
    record = json.loads((out / "run.json").read_text())
    assert record["finish"]["reason"] == "cancelled"
    assert "interrupt" in record["finish"]["detail"]


def test_events_are_decided_one_at_a_time_even_as_fast_as_possible(
    tmp_path: Path,
) -> None:
    # Arrange: interval 0 lets the engine merge events into one hardware
    # sequence, which would drain the event source before the first frame.
    plan = SessionPlan.model_validate(
        {
            "name": "fast",
            "positions": POSITIONS[:1],
            "illumination": {"exposure_ms": 1, "laser_power_mw": 1},
            "time": {"interval_s": 0, "duration_s": 0.5},
            "properties": [{"device": "Camera", "property": "Binning", "value": 4}],
        }
    )
    out = tmp_path / "run"

    # Act
    summary = run_session(default_config(), plan, out=out, worker="none")

    # Assert: the run ends about duration_s after it started, and only the
    # events asked for were made (no backlog acquired after the deadline).
    _, rows = read_rows(out / "frames.csv")
    assert summary.frames == len(rows) > 0
    assert float(rows[-1]["time_s"]) < 0.5 + 1.0
    assert summary.elapsed_s < 0.5 + 3.0
