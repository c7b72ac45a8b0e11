"""The replay rig (hardware_configs/replay.cfg) on the real recordings.

The recordings are read where they are (`../shared/data/real/`), never copied
into the project; tests that need them skip when they are absent.
"""

from __future__ import annotations

import gc
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest
import tifffile
import useq

from scopeloop.errors import ConfigError
from scopeloop.sim import load_core, replay_of
from scopeloop.storage import read_recording

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from pymmcore_plus.experimental.unicore import UniMMCore

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "hardware_configs" / "replay.cfg"
REAL = ROOT.parent / "shared" / "data" / "real"
GOWT1 = REAL / "gowt1-01" / "images.tif"
FMD_NOISY = REAL / "fmd-bpae-nuclei" / "noisy.tif"
RECORDED_MW = 10.0  # replay.cfg's RecordedPower_mW

needs_real = pytest.mark.skipif(
    not GOWT1.is_file() or not FMD_NOISY.is_file(),
    reason=f"real recordings not found under {REAL}",
)


@pytest.fixture
def make_replay() -> Iterator[Callable[..., UniMMCore]]:
    """Factory of replay.cfg cores; keyword arguments are ReplayHub properties."""
    cores: list[UniMMCore] = []

    def make(**hub: Any) -> UniMMCore:
        core = load_core(CONFIG)
        cores.append(core)
        for name, value in hub.items():
            core.setProperty("ReplayHub", name, value)
        return core

    yield make
    cores.clear()
    gc.collect()


def acquire(core: UniMMCore, events: Any) -> list[np.ndarray]:
    frames: list[np.ndarray] = []
    core.mda.events.frameReady.connect(lambda image, *_: frames.append(image.copy()))
    core.mda.run(events)
    return frames


def snap(core: UniMMCore) -> np.ndarray:
    core.snapImage()
    return np.asarray(core.getImage())


@needs_real
def test_replay_at_recorded_power_is_bit_for_bit(
    make_replay: Callable[..., UniMMCore],
) -> None:
    core = make_replay(Recording=str(GOWT1), Clock="Step")
    recorded = tifffile.imread(GOWT1, key=range(4))

    frames = acquire(core, useq.MDASequence(time_plan={"interval": 0, "loops": 4}))

    assert len(frames) == 4
    assert frames[0].dtype == np.uint8
    for got, want in zip(frames, recorded, strict=True):
        assert np.array_equal(got, want)


@needs_real
def test_above_recorded_power_the_recording_is_unchanged_and_says_so(
    make_replay: Callable[..., UniMMCore], caplog: pytest.LogCaptureFixture
) -> None:
    core = make_replay(Recording=str(GOWT1), Clock="Step")
    core.setProperty("Laser", "PowerSetpoint_mW", 3 * RECORDED_MW)

    with caplog.at_level("WARNING", logger="scopeloop.sim.replay"):
        first, second = snap(core), snap(core)

    assert np.array_equal(first, tifffile.imread(GOWT1, key=0))
    assert np.array_equal(second, tifffile.imread(GOWT1, key=1))
    assert sum("cannot add signal" in r.message for r in caplog.records) == 1


@needs_real
@pytest.mark.parametrize("fraction", [0.5, 0.2], ids=["half", "fifth"])
def test_thinning_scales_the_mean_above_offset(
    make_replay: Callable[..., UniMMCore], fraction: float
) -> None:
    # Bright pixels only: there read noise never reaches the 8-bit floor.
    core = make_replay(Recording=str(GOWT1), Clock="Step", Seed=1)
    core.setProperty("Laser", "PowerSetpoint_mW", fraction * RECORDED_MW)
    recorded = tifffile.imread(GOWT1, key=range(3)).astype(np.float64)

    thinned = np.stack([snap(core) for _ in range(3)]).astype(np.float64)

    bright = recorded >= 20
    n = int(bright.sum())
    want = fraction * recorded[bright].sum()
    # Binomial variance p(1-p)e per pixel, read noise 1.5 e: a 5 sigma bound.
    sd = np.sqrt(fraction * (1 - fraction) * recorded[bright].sum() + 1.5**2 * n)
    assert n > 10_000
    assert abs(thinned[bright].sum() - want) < 5 * sd
    assert thinned[bright].mean() == pytest.approx(
        fraction * recorded[bright].mean(), rel=0.01
    )


@needs_real
@pytest.mark.parametrize("fraction", [0.5, 0.25], ids=["half", "quarter"])
def test_thinning_raises_the_noise_as_poisson_statistics_predict(
    make_replay: Callable[..., UniMMCore], tmp_path: Path, fraction: float
) -> None:
    # 16 independent noisy frames of one field: each pixel's spread over them
    # is its noise. Binomial thinning of e electrons to p gives, per pixel,
    # var = p^2 var(e) + p (1 - p) mean(e): the Poisson part of the noise grows
    # as 1/sqrt(p) relative to the signal. No read noise is added (ReadNoise_e
    # 0) so that nothing is clipped at the 8-bit floor.
    field = tifffile.imread(FMD_NOISY)[0]  # (16, 512, 512)
    stack = tmp_path / "fmd_field0.tif"
    tifffile.imwrite(stack, field)
    core = make_replay(Recording=str(stack), Clock="Step", Seed=2)
    core.setProperty("Camera", "ReadNoise_e", 0)
    core.setProperty("Laser", "PowerSetpoint_mW", fraction * RECORDED_MW)
    e = field.astype(np.float64)

    thinned = np.stack([snap(core) for _ in range(len(field))]).astype(np.float64)

    var_e, mean_e = e.var(axis=0, ddof=1), e.mean(axis=0)
    predicted = fraction**2 * var_e + fraction * (1 - fraction) * mean_e
    measured = thinned.var(axis=0, ddof=1)
    assert measured.sum() == pytest.approx(predicted.sum(), rel=0.01)
    # Relative noise (sd / mean) rises by sqrt(1 + (1 - p) mean / (p var)):
    # a plain rescale of the recording would keep it at 1.
    rel_before = np.sqrt(var_e.sum()) / mean_e.sum()
    rel_after = np.sqrt(measured.sum()) / thinned.mean(axis=0).sum()
    rise = np.sqrt(1 + (1 - fraction) * mean_e.sum() / (fraction * var_e.sum()))
    assert rel_after / rel_before == pytest.approx(rise, rel=0.01)
    assert rise > 1.15


@needs_real
def test_shutter_closed_gives_offset_and_read_noise_only(
    make_replay: Callable[..., UniMMCore],
) -> None:
    core = make_replay(Recording=str(GOWT1), Clock="Step")
    core.setProperty("Camera", "Offset", 10)
    core.setShutterOpen(False)

    dark = snap(core).astype(np.float64)

    assert dark.mean() == pytest.approx(10, abs=0.05)
    assert dark.std() == pytest.approx(1.5, rel=0.05)


@needs_real
@pytest.mark.parametrize(
    ("times_s", "expected"),
    [
        pytest.param([0, 1, 2, 3], [0, 1, 2, 3], id="as-recorded"),
        pytest.param([0, 0.4, 0.8, 1.2, 1.6], [0, 0, 0, 1, 1], id="fast-repeats"),
        pytest.param([0, 3, 6, 9], [0, 3, 6, 9], id="slow-skips"),
        pytest.param([0, 2.5, 200], [0, 2, 91], id="past-the-end-holds-the-last"),
    ],
)
def test_manual_clock_serves_the_frame_recorded_at_the_replay_time(
    make_replay: Callable[..., UniMMCore], times_s: list[float], expected: list[int]
) -> None:
    core = make_replay(Recording=str(GOWT1), Clock="Manual", FrameInterval_s=1.0)
    recorded = tifffile.imread(GOWT1, key=sorted(set(expected)))
    by_index = dict(zip(sorted(set(expected)), recorded, strict=True))

    for t, want in zip(times_s, expected, strict=True):
        core.setProperty("ReplayHub", "ReplayTime_s", t)
        assert np.array_equal(snap(core), by_index[want]), f"t={t}"


@needs_real
@pytest.mark.parametrize(
    ("interval_s", "speedup", "expected"),
    [
        pytest.param(0.25, 1.0, [0, 0, 0, 0, 1, 1, 1, 1], id="fast-repeats"),
        pytest.param(2.0, 1.0, [0, 2, 4, 6], id="slow-skips"),
        pytest.param(0.5, 10.0, [0, 5, 10, 15], id="speedup-10"),
    ],
)
def test_wall_clock_replays_elapsed_time_times_speedup(
    make_replay: Callable[..., UniMMCore],
    interval_s: float,
    speedup: float,
    expected: list[int],
) -> None:
    # The hub's wall clock is replaced by one that moves exactly interval_s
    # between frames: what a rig imaging at that interval would see.
    core = make_replay(
        Recording=str(GOWT1), Clock="Wall", FrameInterval_s=1.0, SpeedUp=speedup
    )
    hub = replay_of(core)
    ticks = iter(np.arange(100) * interval_s)
    now = [0.0]

    def fake_timer() -> float:
        return now[0]

    hub.timer = fake_timer
    recorded = tifffile.imread(GOWT1, key=sorted(set(expected)))
    by_index = dict(zip(sorted(set(expected)), recorded, strict=True))

    for want in expected:
        now[0] = float(next(ticks))
        assert np.array_equal(snap(core), by_index[want])


@needs_real
def test_wall_clock_through_mda_skips_frames_at_a_slow_interval(
    make_replay: Callable[..., UniMMCore],
) -> None:
    # Real time: 0.2 s between frames at SpeedUp 10 replays 2 recorded seconds.
    core = make_replay(
        Recording=str(GOWT1), Clock="Wall", FrameInterval_s=1.0, SpeedUp=10
    )
    recorded = tifffile.imread(GOWT1, key=range(20))

    frames = acquire(core, useq.MDASequence(time_plan={"interval": 0.2, "loops": 4}))

    indices = [
        next(i for i, want in enumerate(recorded) if np.array_equal(got, want))
        for got in frames
    ]
    steps = np.diff(indices)
    assert indices[0] == 0
    assert all(1 <= s <= 4 for s in steps), indices
    assert np.mean(steps) >= 1.5, indices


def _two_position_stack(tmp_path: Path) -> Path:
    """An OME-TIFF with two positions (two images) of GOWT1 crops."""
    frames = tifffile.imread(GOWT1, key=range(3))
    path = tmp_path / "two.ome.tif"
    with tifffile.TiffWriter(path, ome=True) as tif:
        for crop in (frames[:, :256, :256], frames[:, 256:512, 256:512]):
            tif.write(crop, metadata={"axes": "TYX", "TimeIncrement": 300.0})
    return path


@needs_real
def test_moving_the_stage_selects_the_recorded_position(
    make_replay: Callable[..., UniMMCore], tmp_path: Path
) -> None:
    path = _two_position_stack(tmp_path)
    core = make_replay(Recording=str(path), Clock="Step", PositionSpacing_um=500)
    frames = tifffile.imread(GOWT1, key=range(3))

    events = [
        useq.MDAEvent(index={"t": t, "p": p}, x_pos=500.0 * p, y_pos=0.0)
        for t in range(2)
        for p in range(2)
    ]
    got = acquire(core, events)

    assert int(core.getProperty("ReplayHub", "Positions")) == 2
    assert float(core.getProperty("ReplayHub", "FrameInterval_s")) == 300.0
    assert np.array_equal(got[0], frames[0, :256, :256])
    assert np.array_equal(got[1], frames[0, 256:512, 256:512])
    assert np.array_equal(got[2], frames[1, :256, :256])
    assert np.array_equal(got[3], frames[1, 256:512, 256:512])


@needs_real
def test_a_stage_position_off_the_recording_is_an_index_error(
    make_replay: Callable[..., UniMMCore], tmp_path: Path
) -> None:
    core = make_replay(Recording=str(_two_position_stack(tmp_path)))
    hub = replay_of(core)

    with pytest.raises(ConfigError, match=r"position index 3, out of range.*0\.\.1"):
        hub.position_at(3000.0, 0.0)


def test_a_tcyx_stack_replays_the_chosen_channel(
    make_replay: Callable[..., UniMMCore], tmp_path: Path
) -> None:
    data = np.arange(3 * 2 * 16 * 16, dtype=np.uint16).reshape(3, 2, 16, 16)
    path = tmp_path / "tcyx.ome.tif"
    tifffile.imwrite(path, data, ome=True, metadata={"axes": "TCYX"})
    core = make_replay(Clock="Step", Channel=1, Recording=str(path))

    assert np.array_equal(snap(core), data[0, 1])
    assert np.array_equal(snap(core), data[1, 1])
    with pytest.raises(ValueError, match="channel 2 is out of range"):
        core.setProperty("ReplayHub", "Channel", 2)
    assert np.array_equal(snap(core), data[2, 1])  # the old channel stays


def test_an_ome_zarr_run_folder_replays(
    make_replay: Callable[..., UniMMCore], tmp_path: Path
) -> None:
    pytest.importorskip("tensorstore")
    core = load_core(ROOT / "hardware_configs" / "demo.cfg")
    core.setProperty("Camera", "SensorWidth", 64)
    core.setProperty("Camera", "SensorHeight", 64)
    core.mda.run(
        useq.MDASequence(time_plan={"interval": 0, "loops": 3}),
        output=str(tmp_path / "raw.ome.zarr"),
    )
    del core
    gc.collect()
    stored = read_recording(tmp_path / "raw.ome.zarr")
    replay = make_replay(Recording=str(tmp_path / "raw.ome.zarr"), Clock="Step")

    got = [snap(replay) for _ in range(3)]

    assert stored.series[0].frames.shape == (3, 64, 64)
    for frame, want in zip(got, stored.series[0].frames, strict=True):
        assert np.array_equal(frame, want)


@pytest.mark.parametrize(
    ("make_path", "message"),
    [
        pytest.param(lambda d: d / "missing.tif", "no such file", id="missing"),
        pytest.param(
            lambda d: _write(d / "bad.tif", b"not a tiff"),
            "cannot read the TIFF",
            id="unreadable",
        ),
        pytest.param(
            lambda d: _zstack(d / "z.ome.tif"), "are not supported", id="tzyx-layout"
        ),
    ],
)
def test_bad_recordings_are_refused_when_set(
    make_replay: Callable[..., UniMMCore],
    tmp_path: Path,
    make_path: Callable[[Path], Path],
    message: str,
) -> None:
    core = make_replay()
    path = make_path(tmp_path)

    with pytest.raises(ValueError, match=rf"ReplayHub: Recording=.*{message}"):
        core.setProperty("ReplayHub", "Recording", str(path))
    assert core.getProperty("ReplayHub", "Recording") == ""


def test_a_config_naming_a_missing_recording_fails_before_acquiring(
    tmp_path: Path,
) -> None:
    text = CONFIG.read_text().replace(
        "# Initialize\n",
        f"#py Property,ReplayHub,Recording,{tmp_path / 'gone.tif'}\n# Initialize\n",
    )
    config = tmp_path / "replay_missing.cfg"
    config.write_text(text)
    core = load_core(config)  # the core logs the hub's failure and goes on

    with pytest.raises(ConfigError, match=r"Recording=.*gone\.tif: no such file"):
        core.getImageWidth()
    with pytest.raises(ConfigError, match=r"gone\.tif: no such file"):
        core.snapImage()
    del core
    gc.collect()


def test_without_a_recording_the_camera_says_how_to_set_one(
    make_replay: Callable[..., UniMMCore],
) -> None:
    core = make_replay()

    with pytest.raises(RuntimeError, match="set the Recording property"):
        core.getImageWidth()


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _zstack(path: Path) -> Path:
    data = np.zeros((2, 3, 8, 8), np.uint16)
    tifffile.imwrite(path, data, ome=True, metadata={"axes": "TZYX"})
    return path
