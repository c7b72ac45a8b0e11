"""Photometry of the simulated camera: signal is linear in light, noise is shot + read.

Every measurement looks at one fixed field at one simulated time (manual clock),
so frames differ only by camera noise. Bleaching and light damage are switched
off (huge doses) so repeated exposures see the same sample.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pytest

if TYPE_CHECKING:
    from collections.abc import Callable

    from pymmcore_plus.experimental.unicore import UniMMCore

OFFSET = 100.0
# Order matters: DeathDose must stay above ArrestDose at every step.
NO_LIGHT_DAMAGE = {"BleachDose_mJ": 1e9, "DeathDose_mJ": 1e9, "ArrestDose_mJ": 1e8}


@pytest.fixture
def still_core(make_core: Callable[..., UniMMCore]) -> UniMMCore:
    """demo.cfg on a manual clock, a sample that neither bleaches nor dies."""
    return make_core(**NO_LIGHT_DAMAGE)


def snap(core: UniMMCore) -> np.ndarray:
    core.snapImage()
    return core.getImage().astype(np.float64)


def set_camera(core: UniMMCore, **props: float) -> None:
    for name, value in props.items():
        core.setProperty("Camera", name, value)


@pytest.mark.parametrize(
    ("setting", "values"),
    [
        pytest.param("power", [1.0, 2.0, 4.0, 8.0], id="laser-power"),
        pytest.param("exposure", [10.0, 25.0, 50.0, 100.0, 200.0], id="exposure"),
    ],
)
def test_signal_above_offset_is_linear_in_light(
    still_core: UniMMCore, setting: str, values: list[float]
) -> None:
    # Arrange
    core = still_core
    core.setProperty("Laser", "PowerSetpoint_mW", 2.0)
    core.setExposure(50.0)

    # Act
    signal = []
    for value in values:
        if setting == "power":
            core.setProperty("Laser", "PowerSetpoint_mW", value)
        else:
            core.setExposure(value)
        signal.append(snap(core).mean() - OFFSET)

    # Assert: proportional (through the origin) within 2 %.
    x, y = np.array(values), np.array(signal)
    slope = (x @ y) / (x @ x)
    assert y[0] > 0.1, "too little light to measure"
    np.testing.assert_allclose(y, slope * x, rtol=0.02)
    intercept = np.polyfit(x, y, 1)[1]
    assert abs(intercept) < 0.02 * y.max()


@pytest.mark.parametrize(
    ("gain", "read_noise_e", "qe"),
    [
        pytest.param(1.0, 1.5, 0.8, id="demo-camera"),
        pytest.param(2.0, 3.0, 0.6, id="gain-2-noisy"),
    ],
)
def test_variance_follows_shot_and_read_noise(
    still_core: UniMMCore, gain: float, read_noise_e: float, qe: float
) -> None:
    # Arrange: bright enough to span 0 .. ~200 electrons per pixel.
    core = still_core
    set_camera(core, Gain=gain, ReadNoise_e=read_noise_e, QuantumEfficiency=qe)
    core.setProperty("Laser", "PowerSetpoint_mW", 8.0)
    core.setExposure(50.0)

    # Act: 32 frames of the same field at the same time; statistics per pixel.
    stack = np.stack([snap(core) for _ in range(32)])
    electrons = (stack - OFFSET) / gain
    mean = electrons.mean(axis=0).ravel()
    var = electrons.var(axis=0, ddof=1).ravel()

    # Assert: var_e = mean_e + read_noise^2 (+ rounding, 1/12 ADU^2).
    # Bin pixels by mean level so bright pixels weigh as much as dark ones.
    edges = np.quantile(mean, np.linspace(0, 1, 21))
    which = np.clip(np.digitize(mean, edges[1:-1]), 0, 19)
    level = np.array([mean[which == b].mean() for b in range(20)])
    spread = np.array([var[which == b].mean() for b in range(20)])
    slope, intercept = np.polyfit(level, spread, 1)
    assert level.max() > 50, "not bright enough for a slope"
    assert slope == pytest.approx(1.0, abs=0.03)  # Poisson: variance = mean
    expected_floor = read_noise_e**2 + 1 / (12 * gain**2)
    assert intercept == pytest.approx(expected_floor, rel=0.1)


@pytest.mark.parametrize(
    ("camera", "exposure_ms", "dark_e"),
    [
        pytest.param({}, 50.0, 0.05 * 0.05, id="demo-camera-50ms"),
        pytest.param({"Gain": 3.0, "ReadNoise_e": 2.0}, 50.0, 0.05 * 0.05, id="gain-3"),
        pytest.param(
            {"DarkCurrent_e_per_s": 100.0, "ReadNoise_e": 1.0},
            1000.0,
            100.0,
            id="dark-current-100e",
        ),
    ],
)
def test_zero_light_frame_is_offset_dark_and_read_noise(
    still_core: UniMMCore, camera: dict[str, float], exposure_ms: float, dark_e: float
) -> None:
    # Arrange: laser off.
    core = still_core
    set_camera(core, **camera)
    core.setExposure(exposure_ms)
    core.setProperty("Laser", "PowerSetpoint_mW", 0.0)
    gain = float(core.getProperty("Camera", "Gain"))
    read_noise = float(core.getProperty("Camera", "ReadNoise_e"))

    # Act
    frame = snap(core)

    # Assert: mean = offset + gain * dark; var = gain^2 (dark + read^2) + 1/12.
    var = gain**2 * (dark_e + read_noise**2) + 1 / 12
    assert frame.mean() == pytest.approx(
        OFFSET + gain * dark_e, abs=6 * np.sqrt(var / frame.size)
    )
    assert frame.var() == pytest.approx(var, rel=0.03)


@pytest.mark.parametrize(
    ("camera", "factor"),
    [
        pytest.param({"Binning": 2}, 4.0, id="binning-2-collects-4-pixels"),
        pytest.param({"QuantumEfficiency": 0.4}, 0.5, id="half-qe"),
        pytest.param({"Gain": 2.5}, 2.5, id="gain-2.5"),
    ],
)
def test_camera_settings_scale_the_signal(
    still_core: UniMMCore, camera: dict[str, float], factor: float
) -> None:
    core = still_core
    core.setProperty("Laser", "PowerSetpoint_mW", 8.0)
    before = snap(core).mean() - OFFSET

    set_camera(core, **camera)
    after = snap(core).mean() - OFFSET

    assert after / before == pytest.approx(factor, rel=0.03)
