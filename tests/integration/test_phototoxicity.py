"""Light has a price: fluorescence bleaches with dose, and high doses stop divisions."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import pytest

from scopeloop.sim import Phase, world_of

if TYPE_CHECKING:
    from collections.abc import Callable

    from pymmcore_plus.experimental.unicore import UniMMCore

    from scopeloop.sim import Culture

OFFSET = 100.0
FIELD_UM = 256.0  # 512 px x 0.5 um
SEED = 0


def snap(core: UniMMCore) -> np.ndarray:
    core.snapImage()
    return core.getImage().astype(np.float64)


@pytest.mark.parametrize(
    "bleach_dose_mj", [150.0, 40.0], ids=["default-150mJ", "fragile-40mJ"]
)
def test_fluorescence_bleaches_as_exp_of_dose(
    make_core: Callable[..., UniMMCore], bleach_dose_mj: float
) -> None:
    # Arrange: no autofluorescence and no death, so only the nuclei's signal
    # changes; 50 mW x 100 ms = 5 mJ per frame, at one simulated time.
    core = make_core(
        BleachDose_mJ=bleach_dose_mj,
        DeathDose_mJ=1e9,
        ArrestDose_mJ=1e8,
        Background=0.0,
    )
    core.setProperty("Laser", "MaxPower_mW", 50.0)
    core.setProperty("Laser", "PowerSetpoint_mW", 50.0)
    core.setExposure(100.0)

    # Act: crop away nuclei whose centres lie outside the lit field.
    signal = [(snap(core)[40:-40, 40:-40] - OFFSET).mean() for _ in range(9)]

    # Assert: S_k / S_0 = exp(-k * 5 mJ / BleachDose).
    ratios = np.array(signal) / signal[0]
    expected = np.exp(-5.0 * np.arange(9) / bleach_dose_mj)
    np.testing.assert_allclose(ratios, expected, rtol=0.01)
    assert world_of(core).delivered_dose_mj == pytest.approx(45.0)


def divisions_in_field(
    culture: Culture, x_um: float, y_um: float, after_s: float = 0.0
) -> int:
    """Divisions after `after_s` whose place lies in the field centred on (x, y)."""
    p = culture.params
    n = 0
    for d in culture.divisions:
        dx = (
            d.x_um - x_um + p.slide_width_um / 2
        ) % p.slide_width_um - p.slide_width_um / 2
        dy = (
            d.y_um - y_um + p.slide_height_um / 2
        ) % p.slide_height_um - p.slide_height_um / 2
        n += d.time_s > after_s and abs(dx) <= FIELD_UM / 2 and abs(dy) <= FIELD_UM / 2
    return n


@pytest.mark.slow
def test_high_dose_bleaches_kills_and_stops_divisions(
    make_core: Callable[..., UniMMCore],
) -> None:
    # Arrange: a dense culture on a 1 mm slide; a high-dose field imaged at
    # 50 mW x 100 ms (5 mJ a frame) and a control at 1 mW x 10 ms (0.01 mJ).
    core = make_core(
        Seed=SEED, SlideWidth_um=1000.0, SlideHeight_um=1000.0, Density_per_mm2=1500.0
    )
    core.setProperty("Laser", "MaxPower_mW", 50.0)
    world = world_of(core)
    params = world.params
    fields = {
        "high": ((-250.0, 0.0), 50.0, 100.0),
        "low": ((250.0, 0.0), 1.0, 10.0),
    }
    signal: dict[str, list[float]] = {"high": [], "low": []}
    hours, interval_s = 8, 600.0

    # Act: image both every 10 min for 8 simulated hours.
    for k in range(int(hours * 3600 / interval_s) + 1):
        world.set_time(k * interval_s)
        for name, ((x, y), power, exposure) in fields.items():
            core.setXYPosition(x, y)
            core.setProperty("Laser", "PowerSetpoint_mW", power)
            core.setExposure(exposure)
            signal[name].append((snap(core).mean() - OFFSET) / (power * exposure))

    # Assert
    culture = world.culture
    phases = culture.phases()
    dose = culture.cells["dose_mj"]
    high_idx, _, _ = culture.in_field(-250.0, 0.0, FIELD_UM, FIELD_UM)
    low_idx, _, _ = culture.in_field(250.0, 0.0, FIELD_UM, FIELD_UM)

    # Bleaching: the high-dose field's signal per mW.ms collapses; the
    # control's does not (its cells grow and divide).
    assert signal["high"][-1] < 0.3 * signal["high"][0]
    assert signal["low"][-1] > 0.9 * signal["low"][0]

    # Damage: the high-dose cells are past DeathDose and dead, the control's
    # are far below ArrestDose.
    assert np.median(dose[high_idx]) >= params.death_dose_mj
    assert np.mean(phases[high_idx] == Phase.DEAD) > 0.8
    assert np.all(dose[low_idx] < params.arrest_dose_mj)
    assert not np.any(phases[low_idx] == Phase.DEAD)
    last_high = [e for e in world.exposures if e.stage_x_um == -250.0][-1]
    assert np.mean(last_high.nuclei.phase == Phase.DEAD) > 0.8

    # Divisions: the control divides at the normal rate. The high-dose field
    # passes ArrestDose (20 mJ) at its 4th frame (30 min): after that it only
    # finishes mitoses under way (under 35 min), so past the first hour it
    # hardly divides at all.
    low = divisions_in_field(culture, 250.0, 0.0)
    high = divisions_in_field(culture, -250.0, 0.0)
    n_low = low_idx.size - low  # cells at the start, about
    expected_low = n_low * (2 ** (hours / params.cycle_h) - 1)
    assert low == pytest.approx(expected_low, abs=4 * math.sqrt(expected_low) + 2)
    assert high < 0.5 * low
    low_late = divisions_in_field(culture, 250.0, 0.0, after_s=3600.0)
    high_late = divisions_in_field(culture, -250.0, 0.0, after_s=3600.0)
    assert low_late >= 15
    assert high_late <= 0.2 * low_late
