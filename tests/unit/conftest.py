"""Fixtures shared by the unit tests of the models."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from scopeloop.models._data import simulate_clip
from scopeloop.sim import CultureParams, SensorModel

if TYPE_CHECKING:
    from collections.abc import Callable

    from scopeloop.models._data import SimClip


@pytest.fixture
def realistic_clip() -> Callable[[int], SimClip]:
    """Clips of `frames` frames as the worker sees them.

    A fast-dividing culture (4 h cycle) imaged every 3 min from 1 h on,
    256 x 256 pixels of 0.5 um at 1 mW x 50 ms: the same culture for every
    number of frames.
    """

    def make(frames: int) -> SimClip:
        params = CultureParams(
            seed=0, cycle_h=4.0, slide_width_um=600, slide_height_um=600
        )
        return simulate_clip(
            params,
            SensorModel(),
            shape=(256, 256),
            frames=frames,
            interval_s=180,
            start_s=3600,
            pixel_um=0.5,
            laser_power_mw=1.0,
            exposure_ms=50,
        )

    return make
