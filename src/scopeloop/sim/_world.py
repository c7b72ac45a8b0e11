"""The simulated world that the simulated devices share.

One `World` per simulator hub: the culture, the simulated clock, and the state
of the light path (laser power, shutter, stage, focus) that the devices set.
Every camera exposure is recorded with what the field showed, so ground truth
can be exported for any acquired frame.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING

import numpy as np

from scopeloop.errors import ConfigError

from ._culture import Culture, NucleiView
from ._render import blur_for_defocus, render_fluorescence

if TYPE_CHECKING:
    from numpy.typing import NDArray

    from ._params import CultureParams

__all__ = ["REFERENCE_PIXEL_UM", "ClockMode", "Exposure", "LightPath", "World"]

REFERENCE_PIXEL_UM = 0.5  # pixel size at which Brightness and Background are given


@dataclass(slots=True)
class LightPath:
    """What the devices set and the camera's exposure reads."""

    laser_power_mw: float = 0.0
    shutter_open: bool = False
    stage_x_um: float = 0.0
    stage_y_um: float = 0.0
    focus_um: float = 0.0


class ClockMode(StrEnum):
    """How simulated time advances."""

    WALL = "Wall"
    """Simulated time = wall time since the world started x speed-up."""
    MANUAL = "Manual"
    """Simulated time moves only when set (deterministic runs and tests)."""


@dataclass(frozen=True, slots=True)
class Exposure:
    """One camera exposure: when, where, with how much light, and what it saw."""

    index: int
    time_s: float
    stage_x_um: float
    stage_y_um: float
    focus_um: float
    laser_power_mw: float
    exposure_ms: float
    dose_mj: float
    binning: int
    pixel_um: float
    shape: tuple[int, int]
    nuclei: NucleiView


class World:
    """A culture under a microscope, with its own simulated clock.

    Thread-safe: devices call it from the acquisition thread and from the
    thread that sets properties.
    """

    def __init__(
        self,
        params: CultureParams,
        *,
        speedup: float = 1.0,
        clock: ClockMode = ClockMode.WALL,
        light: LightPath | None = None,
    ) -> None:
        self.params = params
        self.culture = Culture(params)
        self.exposures: list[Exposure] = []
        self.light = light if light is not None else LightPath()
        self._noise_rng = np.random.default_rng([params.seed, 1])
        self._lock = threading.RLock()
        self._speedup = speedup
        self._clock = ClockMode(clock)
        self._manual_time_s = 0.0
        self._wall_origin = time.perf_counter()
        self._time_origin = 0.0

    # -- clock --------------------------------------------------------------

    @property
    def clock(self) -> ClockMode:
        """The current `ClockMode`."""
        return self._clock

    @clock.setter
    def clock(self, mode: ClockMode) -> None:
        with self._lock:
            now = self.now()
            self._clock = ClockMode(mode)
            self._manual_time_s = now
            self._rebase(now)

    @property
    def speedup(self) -> float:
        """Simulated seconds per wall-clock second (wall clock only)."""
        return self._speedup

    @speedup.setter
    def speedup(self, value: float) -> None:
        if not math.isfinite(value) or value <= 0:
            raise ConfigError(f"speed-up must be a positive number, got {value!r}")
        with self._lock:
            self._rebase(self.now())
            self._speedup = float(value)

    def _rebase(self, now: float) -> None:
        self._wall_origin = time.perf_counter()
        self._time_origin = now

    def now(self) -> float:
        """Current simulated time in seconds."""
        if self._clock is ClockMode.MANUAL:
            return self._manual_time_s
        elapsed = time.perf_counter() - self._wall_origin
        return self._time_origin + elapsed * self._speedup

    def set_time(self, time_s: float) -> None:
        """Move a manual clock forward to `time_s` (time never runs backwards)."""
        with self._lock:
            if self._clock is not ClockMode.MANUAL:
                raise ConfigError(
                    "simulated time can only be set with Clock=Manual "
                    f"(the clock is {self._clock.value!r})"
                )
            if time_s < self._manual_time_s:
                raise ConfigError(
                    f"simulated time cannot go backwards: {time_s} s < "
                    f"{self._manual_time_s} s"
                )
            self._manual_time_s = float(time_s)

    # -- acquisition --------------------------------------------------------

    def expose(
        self,
        *,
        shape: tuple[int, int],
        binning: int,
        pixel_um: float,
        exposure_ms: float,
    ) -> tuple[NDArray[np.float32], float, Exposure]:
        """Expose the field under the objective.

        Returns the expected photons per (binned) pixel from the sample, the
        expected uniform background photons per pixel, and the `Exposure`
        record. Delivers the dose to the cells in the field (bleaching,
        phototoxicity) after the photons are counted.
        """
        if not (math.isfinite(exposure_ms) and exposure_ms >= 0):
            raise ConfigError(
                f"exposure must be a finite number of ms >= 0, got {exposure_ms!r}"
            )
        with self._lock:
            t = self.now()
            self.culture.advance_to(t)
            lp = self.light
            power = lp.laser_power_mw if lp.shutter_open else 0.0
            light = power * exposure_ms  # mW * ms
            px = pixel_um * binning
            view = self.culture.view(lp.stage_x_um, lp.stage_y_um, shape, px)
            per_light = render_fluorescence(view, shape, px)
            per_light = blur_for_defocus(
                per_light,
                lp.focus_um - self.params.sample_z_um,
                self.params.depth_of_field_um,
                px,
            )
            # Brightness and Background are per 0.5 um pixel: a pixel collects
            # in proportion to the area it sees in the sample.
            area = (px / REFERENCE_PIXEL_UM) ** 2
            per_light *= light * area
            background = self.params.background * light * area
            dose = light / 1000.0
            self.culture.illuminate(
                lp.stage_x_um, lp.stage_y_um, shape[1] * px, shape[0] * px, dose
            )
            record = Exposure(
                index=len(self.exposures),
                time_s=t,
                stage_x_um=lp.stage_x_um,
                stage_y_um=lp.stage_y_um,
                focus_um=lp.focus_um,
                laser_power_mw=power,
                exposure_ms=exposure_ms,
                dose_mj=dose,
                binning=binning,
                pixel_um=px,
                shape=shape,
                nuclei=view,
            )
            self.exposures.append(record)
            return per_light, background, record

    @property
    def noise_rng(self) -> np.random.Generator:
        """Random generator for camera noise (seeded from the world's seed)."""
        return self._noise_rng

    @property
    def delivered_dose_mj(self) -> float:
        """Total dose delivered to the sample so far."""
        return float(sum(e.dose_mj for e in self.exposures))
