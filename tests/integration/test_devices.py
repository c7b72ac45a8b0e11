"""demo.cfg loads into a UniMMCore and every simulated device works through MMCore."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pytest

from scopeloop.sim import world_of

if TYPE_CHECKING:
    from collections.abc import Callable

    from pymmcore_plus.experimental.unicore import UniMMCore

OFFSET = 100.0
READ_NOISE_E = 1.5


def snap(core: UniMMCore) -> np.ndarray:
    core.snapImage()
    return core.getImage()


def test_config_loads_every_device_in_its_role(demo_core: UniMMCore) -> None:
    core = demo_core

    loaded = set(core.getLoadedDevices())

    assert {"SimHub", "Camera", "Laser", "Shutter", "XYStage", "Focus"} <= loaded
    assert core.getCameraDevice() == "Camera"
    assert core.getShutterDevice() == "Shutter"
    assert core.getXYStageDevice() == "XYStage"
    assert core.getFocusDevice() == "Focus"
    assert not core.getAutoShutter()
    assert set(core.getAvailableConfigGroups()) >= {"Channel", "LaserPower", "System"}


def test_snap_gives_a_16_bit_frame_of_the_sensor_size(demo_core: UniMMCore) -> None:
    image = snap(demo_core)

    assert image.dtype == np.uint16
    assert image.shape == (512, 512)
    assert (demo_core.getImageHeight(), demo_core.getImageWidth()) == (512, 512)
    assert demo_core.getImageBitDepth() == 16
    assert image.min() > 0  # offset 100 keeps read noise above zero
    assert image.max() > OFFSET + 20  # the start-up state (2 mW, open) shows nuclei


@pytest.mark.parametrize(
    ("width", "height", "binning", "shape"),
    [
        pytest.param(512, 512, 1, (512, 512), id="default"),
        pytest.param(256, 128, 1, (128, 256), id="sensor-256x128"),
        pytest.param(512, 512, 2, (256, 256), id="bin-2"),
        pytest.param(256, 512, 4, (128, 64), id="sensor-256x512-bin-4"),
    ],
)
def test_sensor_size_and_binning_set_the_frame_shape(
    demo_core: UniMMCore, width: int, height: int, binning: int, shape: tuple[int, int]
) -> None:
    core = demo_core

    core.setProperty("Camera", "SensorWidth", width)
    core.setProperty("Camera", "SensorHeight", height)
    core.setProperty("Camera", "Binning", binning)
    image = snap(core)

    assert image.shape == shape
    assert (core.getImageHeight(), core.getImageWidth()) == shape
    assert core.getPixelSizeUm() == pytest.approx(0.5 * binning)
    assert world_of(core).exposures[-1].pixel_um == pytest.approx(0.5 * binning)


def test_pixel_size_is_half_a_micrometre(demo_core: UniMMCore) -> None:
    assert demo_core.getPixelSizeUm() == pytest.approx(0.5)
    assert float(demo_core.getProperty("Camera", "PixelSize_um")) == pytest.approx(0.5)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        pytest.param("Offset", 100.0, id="offset"),
        pytest.param("Gain", 1.0, id="gain"),
        pytest.param("ReadNoise_e", 1.5, id="read-noise"),
        pytest.param("QuantumEfficiency", 0.8, id="qe"),
        pytest.param("FullWell_e", 30000.0, id="full-well"),
        pytest.param("Exposure", 50.0, id="exposure"),
    ],
)
def test_camera_properties_exist_with_configured_values(
    demo_core: UniMMCore, name: str, value: float
) -> None:
    assert demo_core.hasProperty("Camera", name)
    assert float(demo_core.getProperty("Camera", name)) == pytest.approx(value)


@pytest.mark.parametrize(
    "exposure_ms", [0.5, 10.0, 123.0, 2000.0], ids=["0.5ms", "10ms", "123ms", "2s"]
)
def test_exposure_set_and_get(demo_core: UniMMCore, exposure_ms: float) -> None:
    demo_core.setExposure(exposure_ms)
    snap(demo_core)

    assert demo_core.getExposure() == pytest.approx(exposure_ms)
    assert world_of(demo_core).exposures[-1].exposure_ms == pytest.approx(exposure_ms)


@pytest.mark.parametrize(
    "power_mw", [0.0, 0.5, 7.0, 100.0], ids=["off", "0.5mW", "7mW", "max"]
)
def test_laser_power_set_and_get(demo_core: UniMMCore, power_mw: float) -> None:
    demo_core.setProperty("Laser", "PowerSetpoint_mW", power_mw)
    snap(demo_core)

    assert float(demo_core.getProperty("Laser", "PowerSetpoint_mW")) == pytest.approx(
        power_mw
    )
    record = world_of(demo_core).exposures[-1]
    assert record.laser_power_mw == pytest.approx(power_mw)
    assert record.dose_mj == pytest.approx(power_mw * 50.0 / 1000)


@pytest.mark.parametrize(
    ("preset", "power_mw"),
    [("Low", 1.0), ("Medium", 5.0), ("High", 20.0)],
    ids=["low", "medium", "high"],
)
def test_laser_power_presets(
    demo_core: UniMMCore, preset: str, power_mw: float
) -> None:
    demo_core.setConfig("LaserPower", preset)

    assert float(demo_core.getProperty("Laser", "PowerSetpoint_mW")) == power_mw
    assert demo_core.getCurrentConfig("LaserPower") == preset


def test_shutter_open_close_and_state_property(demo_core: UniMMCore) -> None:
    core = demo_core
    assert core.getShutterOpen()  # System/Startup opens it

    core.setShutterOpen(False)
    closed = (core.getShutterOpen(), int(core.getProperty("Shutter", "State")))
    core.setProperty("Shutter", "State", 1)
    reopened = core.getShutterOpen()

    assert closed == (False, 0)
    assert reopened


def test_closed_shutter_gives_no_signal_above_offset(demo_core: UniMMCore) -> None:
    # Arrange: plenty of light behind the shutter.
    core = demo_core
    core.setProperty("Laser", "PowerSetpoint_mW", 50.0)
    core.setExposure(100.0)
    open_frame = snap(core).astype(np.float64)

    # Act
    core.setShutterOpen(False)
    closed_frame = snap(core).astype(np.float64)

    # Assert: read noise only (and 0.005 e of dark current); no dose delivered.
    noise_sd = np.sqrt(READ_NOISE_E**2 + 1 / 12)
    assert closed_frame.mean() == pytest.approx(OFFSET, abs=0.05)
    assert closed_frame.std() == pytest.approx(noise_sd, rel=0.05)
    assert closed_frame.max() < OFFSET + 7 * noise_sd
    assert open_frame.max() > OFFSET + 100
    assert world_of(core).exposures[-1].dose_mj == 0.0


@pytest.mark.parametrize(
    "xy",
    [(0.0, 0.0), (1234.5, -678.0), (-49_000.0, 49_000.0)],
    ids=["origin", "inside", "far"],
)
def test_xy_stage_set_and_get(demo_core: UniMMCore, xy: tuple[float, float]) -> None:
    demo_core.setXYPosition(*xy)

    assert demo_core.getXYPosition() == pytest.approx(xy)
    assert demo_core.getXPosition() == pytest.approx(xy[0])
    assert demo_core.getYPosition() == pytest.approx(xy[1])


@pytest.mark.parametrize("z", [0.0, -12.5, 300.0], ids=["zero", "below", "above"])
def test_focus_set_and_get(demo_core: UniMMCore, z: float) -> None:
    demo_core.setPosition(z)

    assert demo_core.getPosition() == pytest.approx(z)
    assert demo_core.getPosition("Focus") == pytest.approx(z)


def test_moving_the_stage_shows_another_field(demo_core: UniMMCore) -> None:
    core = demo_core
    here = snap(core).astype(np.float64)

    core.setXYPosition(500.0, 0.0)
    there = snap(core).astype(np.float64)
    core.setXYPosition(0.0, 0.0)
    back = snap(core).astype(np.float64)

    # Same field, same (manual) time: identical but for noise.
    assert np.corrcoef(here.ravel(), back.ravel())[0, 1] > 0.8
    assert abs(np.corrcoef(here.ravel(), there.ravel())[0, 1]) < 0.2


def test_hub_reports_time_dose_and_divisions(demo_core: UniMMCore) -> None:
    core = demo_core
    core.setProperty("SimHub", "SimTime_s", 3 * 3600.0)
    core.setProperty("Laser", "PowerSetpoint_mW", 10.0)
    core.setExposure(100.0)

    snap(core)
    snap(core)

    world = world_of(core)
    assert world.now() == 3 * 3600.0
    assert float(core.getProperty("SimHub", "SimTime_s")) == 3 * 3600.0
    assert float(core.getProperty("SimHub", "DeliveredDose_mJ")) == pytest.approx(2.0)
    assert (
        int(core.getProperty("SimHub", "Divisions")) == len(world.culture.divisions) > 0
    )


def test_software_roi_crops_the_full_field(demo_core: UniMMCore) -> None:
    core = demo_core
    core.setProperty("Laser", "PowerSetpoint_mW", 20.0)
    full = snap(core).astype(np.float64)

    core.setROI(64, 32, 200, 100)
    crop = snap(core).astype(np.float64)

    assert crop.shape == (100, 200)
    assert np.corrcoef(crop.ravel(), full[32:132, 64:264].ravel())[0, 1] > 0.9


def test_hub_culture_properties_reach_the_culture(
    make_core: Callable[..., UniMMCore],
) -> None:
    # Arrange: the same small slide, with a 10 h and a 40 h cell cycle.
    small = {
        "SlideWidth_um": 1000.0,
        "SlideHeight_um": 1000.0,
        "Density_per_mm2": 1500.0,
    }
    fast = make_core(Seed=1, CellCycle_h=10.0, **small)
    slow = make_core(Seed=1, CellCycle_h=40.0, **small)

    # Act
    for core in (fast, slow):
        core.setProperty("SimHub", "SimTime_s", 4 * 3600.0)
        snap(core)

    # Assert: parameters arrived, and the division counts follow the cycle.
    world = world_of(fast)
    assert world.params.cycle_h == 10.0
    assert world.params.slide_width_um == 1000.0
    n_fast = int(fast.getProperty("SimHub", "Divisions"))
    n_slow = int(slow.getProperty("SimHub", "Divisions"))
    expected = (2 ** (4 / 10) - 1) / (2 ** (4 / 40) - 1)  # 4.4
    assert n_fast / n_slow == pytest.approx(expected, rel=0.25)
