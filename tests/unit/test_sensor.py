"""SensorModel: photons in, grey levels out, with the right noise statistics."""

from __future__ import annotations

import math

import numpy as np
import pytest

from scopeloop.sim import SensorModel

SHAPE = (512, 512)
N_PIXELS = SHAPE[0] * SHAPE[1]


def read_frame(
    sensor: SensorModel,
    *,
    photons: float = 0.0,
    background: float = 0.0,
    exposure_ms: float = 10.0,
    seed: int = 0,
) -> np.ndarray:
    expected = np.full(SHAPE, photons, np.float32)
    out = np.empty(SHAPE, np.uint16)
    return sensor.read(
        expected, background, exposure_ms, np.random.default_rng(seed), out
    )


def electrons(sensor: SensorModel, grey: np.ndarray) -> np.ndarray:
    return (grey.astype(np.float64) - sensor.offset_adu) / sensor.gain_adu_per_e


# Photons can arrive through the per-pixel signal or the uniform background; both
# paths must count photons as Poisson.
LOW_LIGHT_PATHS = [
    pytest.param({"photons": 0.5}, id="signal-0.5-photons"),
    pytest.param({"background": 0.5}, id="background-0.5-photons"),
    pytest.param({"photons": 0.25, "background": 0.25}, id="both-0.25-photons"),
]


@pytest.mark.parametrize("light", LOW_LIGHT_PATHS)
def test_low_counts_are_poisson_not_gaussian(light: dict[str, float]) -> None:
    # Arrange: no read noise, no dark current, so grey - offset is the count.
    sensor = SensorModel(read_noise_e=0.0, dark_e_per_s=0.0, quantum_efficiency=0.8)
    mean_e = 0.8 * 0.5

    # Act
    counts = electrons(sensor, read_frame(sensor, **light))

    # Assert: whole electrons, and P(k) = exp(-mu) mu^k / k! for k = 0, 1, 2.
    assert np.all(counts == np.round(counts))
    assert counts.min() == 0
    for k in range(3):
        expected = math.exp(-mean_e) * mean_e**k / math.factorial(k)
        sd = math.sqrt(expected * (1 - expected) / N_PIXELS)
        observed = float(np.mean(counts == k))
        assert observed == pytest.approx(expected, abs=6 * sd), f"P({k})"
    # A rounded Gaussian of the same mean and variance gives P(0) ~ 0.56, not 0.67.
    assert np.mean(counts == 0) > 0.66
    assert counts.var() == pytest.approx(mean_e, rel=0.02)


NOISE_CASES = [
    # (sensor settings, photons, background, exposure ms) -> electrons' mean, var
    pytest.param(
        {"read_noise_e": 3.0, "dark_e_per_s": 0.0},
        0.0,
        0.0,
        10.0,
        0.0,
        9.0,
        id="read-noise-only",
    ),
    pytest.param(
        {
            "read_noise_e": 2.0,
            "quantum_efficiency": 0.5,
            "gain_adu_per_e": 2.0,
            "dark_e_per_s": 0.0,
        },
        20.0,
        5.0,
        10.0,
        12.5,
        12.5 + 4.0,
        id="signal-background-read-gain2",
    ),
    pytest.param(
        {"read_noise_e": 1.0, "dark_e_per_s": 50.0},
        0.0,
        0.0,
        1000.0,
        50.0,
        51.0,
        id="dark-current",
    ),
    pytest.param(
        {
            "read_noise_e": 1.5,
            "quantum_efficiency": 0.9,
            "gain_adu_per_e": 0.5,
            "dark_e_per_s": 0.0,
        },
        3000.0,
        0.0,
        10.0,
        2700.0,
        2700.0 + 2.25,
        id="bright-gain-half",
    ),
    pytest.param(
        {"read_noise_e": 1.5, "dark_e_per_s": 0.0},
        0.0,
        2600.0,
        10.0,
        2080.0,
        2080.0 + 2.25,
        id="bright-uniform-background",
    ),
]


@pytest.mark.parametrize(
    ("settings", "photons", "background", "exposure_ms", "mean_e", "var_e"), NOISE_CASES
)
def test_mean_and_variance_follow_shot_and_read_noise(
    settings: dict[str, float],
    photons: float,
    background: float,
    exposure_ms: float,
    mean_e: float,
    var_e: float,
) -> None:
    # Arrange
    sensor = SensorModel(**settings)
    gain = sensor.gain_adu_per_e

    # Act
    grey = read_frame(
        sensor, photons=photons, background=background, exposure_ms=exposure_ms
    )

    # Assert: grey = offset + gain * e, rounded (quantisation adds 1/12 ADU^2).
    values = grey.astype(np.float64)
    var_grey = gain**2 * var_e + 1 / 12
    assert values.mean() == pytest.approx(
        sensor.offset_adu + gain * mean_e, abs=6 * math.sqrt(var_grey / N_PIXELS) + 0.01
    )
    assert values.var() == pytest.approx(var_grey, rel=0.02)


@pytest.mark.parametrize(
    ("settings", "photons", "expected_grey"),
    [
        pytest.param({"full_well_e": 1000.0}, 1e6, 100 + 1000, id="full-well"),
        pytest.param(
            {"full_well_e": 1e5, "gain_adu_per_e": 2.0}, 1e6, 65535, id="adc-16-bit"
        ),
    ],
)
def test_saturation_clips(
    settings: dict[str, float], photons: float, expected_grey: int
) -> None:
    sensor = SensorModel(**settings)

    grey = read_frame(sensor, photons=photons)

    assert grey.min() == grey.max() == expected_grey


def test_same_generator_state_gives_the_same_frame() -> None:
    sensor = SensorModel()

    first = read_frame(sensor, photons=5.0, background=1.0, seed=7)
    again = read_frame(sensor, photons=5.0, background=1.0, seed=7)
    other = read_frame(sensor, photons=5.0, background=1.0, seed=8)

    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)


def test_read_fills_and_returns_the_given_buffer() -> None:
    sensor = SensorModel()
    out = np.zeros(SHAPE, np.uint16)

    result = sensor.read(
        np.full(SHAPE, 10.0, np.float32), 0.0, 10.0, np.random.default_rng(0), out
    )

    assert result is out
    assert out.dtype == np.uint16
    assert out.mean() > sensor.offset_adu
