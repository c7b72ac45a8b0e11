"""World: the simulated clock, exposures, dose bookkeeping."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest

from scopeloop.errors import ConfigError
from scopeloop.sim import ClockMode, CultureParams, World

PARAMS = CultureParams(
    slide_width_um=600, slide_height_um=600, density_per_mm2=1500, seed=2
)


def manual_world(**light: float | bool) -> World:
    world = World(PARAMS, clock=ClockMode.MANUAL)
    for key, value in light.items():
        setattr(world.light, key, value)
    return world


def test_manual_clock_moves_only_forward_when_set() -> None:
    world = manual_world()

    assert world.now() == 0.0
    world.set_time(120.0)
    world.set_time(120.0)  # standing still is allowed

    assert world.now() == 120.0
    with pytest.raises(ConfigError, match="backwards"):
        world.set_time(60.0)
    assert world.now() == 120.0


def test_wall_clock_runs_at_speedup_and_can_be_frozen() -> None:
    # Arrange: bracket the world's whole life with the wall clock.
    before = time.perf_counter()
    world = World(PARAMS, clock=ClockMode.WALL, speedup=1e6)

    # Act
    first = world.now()
    second = world.now()
    elapsed = time.perf_counter() - before
    world.clock = ClockMode.MANUAL
    frozen = world.now()
    still = world.now()
    resumed_at = time.perf_counter()
    world.clock = ClockMode.WALL
    resumed = world.now()
    resume_wall = time.perf_counter() - resumed_at

    # Assert: simulated time = wall time x speed-up; freezing keeps the time,
    # and resuming goes on from there without a jump.
    assert 0 < first <= second <= 1e6 * elapsed
    assert still == frozen >= second
    assert frozen <= resumed <= frozen + 1e6 * resume_wall
    with pytest.raises(ConfigError, match="Manual"):
        World(PARAMS, clock=ClockMode.WALL).set_time(10.0)


@pytest.mark.parametrize(
    "value", [0.0, -1.0, math.nan, math.inf], ids=["zero", "negative", "nan", "inf"]
)
def test_speedup_must_be_positive_and_finite(value: float) -> None:
    world = World(PARAMS, clock=ClockMode.WALL)

    with pytest.raises(ConfigError, match="speed-up"):
        world.speedup = value

    assert world.speedup == 1.0


EXPOSE = {"shape": (128, 128), "binning": 1, "pixel_um": 0.5, "exposure_ms": 100.0}


@pytest.mark.parametrize(
    ("shutter_open", "power_mw", "dose_mj"),
    [
        pytest.param(True, 20.0, 2.0, id="open-20mW"),
        pytest.param(True, 0.0, 0.0, id="open-laser-off"),
        pytest.param(False, 20.0, 0.0, id="shutter-closed"),
    ],
)
def test_expose_delivers_power_times_time_only_through_an_open_shutter(
    shutter_open: bool, power_mw: float, dose_mj: float
) -> None:
    # Arrange: a field on the middle of the slide.
    world = manual_world(
        shutter_open=shutter_open,
        laser_power_mw=power_mw,
        stage_x_um=300.0,
        stage_y_um=300.0,
    )
    in_field, _, _ = world.culture.in_field(300.0, 300.0, 64.0, 64.0)

    # Act
    photons, background, record = world.expose(**EXPOSE)

    # Assert
    assert in_field.size > 0
    assert record.dose_mj == pytest.approx(dose_mj)
    assert world.delivered_dose_mj == pytest.approx(dose_mj)
    np.testing.assert_allclose(world.culture.cells["dose_mj"][in_field], dose_mj)
    light = power_mw * EXPOSE["exposure_ms"] if shutter_open else 0.0
    assert background == pytest.approx(PARAMS.background * light)
    assert (photons.max() > 0) == (light > 0)
    assert record.laser_power_mw == (power_mw if shutter_open else 0.0)
    assert record.shape == EXPOSE["shape"]
    assert world.exposures == [record]


def test_binning_keeps_photons_per_area() -> None:
    # Arrange: the same 64 um field, 128x128 unbinned or 64x64 binned 2x2.
    world = manual_world(shutter_open=True, laser_power_mw=1.0)
    bright = {"pixel_um": 0.5, "exposure_ms": 1.0}

    # Act
    full, bg1, _ = world.expose(shape=(128, 128), binning=1, **bright)
    binned, bg2, record = world.expose(shape=(64, 64), binning=2, **bright)

    # Assert
    assert record.pixel_um == 1.0
    assert binned.sum() == pytest.approx(full.sum(), rel=0.03)
    assert bg2 == pytest.approx(4 * bg1)


def test_smaller_pixels_see_less_of_the_sample_each() -> None:
    # Arrange: the same 64 um field seen with 0.5 um and 0.25 um pixels.
    world = manual_world(shutter_open=True, laser_power_mw=1.0)

    # Act
    coarse, bg_coarse, _ = world.expose(
        shape=(128, 128), binning=1, pixel_um=0.5, exposure_ms=1.0
    )
    fine, bg_fine, _ = world.expose(
        shape=(256, 256), binning=1, pixel_um=0.25, exposure_ms=1.0
    )

    # Assert: the field's photons do not depend on how finely it is sampled.
    assert fine.sum() == pytest.approx(coarse.sum(), rel=0.03)
    assert bg_fine == pytest.approx(bg_coarse / 4)


def test_exposure_records_what_the_field_showed_at_that_time() -> None:
    world = manual_world(shutter_open=True, laser_power_mw=1.0, stage_x_um=100.0)
    world.set_time(1800.0)

    _, _, record = world.expose(**EXPOSE)

    assert record.time_s == 1800.0
    assert world.culture.time_s == pytest.approx(1800.0)
    assert record.stage_x_um == 100.0
    assert len(record.nuclei) > 0
    assert record.index == 0


@pytest.mark.parametrize("exposure_ms", [-1.0, math.nan], ids=["negative", "nan"])
def test_impossible_exposure_is_refused_before_any_dose(exposure_ms: float) -> None:
    world = manual_world(shutter_open=True, laser_power_mw=5.0)

    with pytest.raises(ConfigError, match="exposure"):
        world.expose(**{**EXPOSE, "exposure_ms": exposure_ms})

    assert world.exposures == []
    assert world.delivered_dose_mj == 0.0
