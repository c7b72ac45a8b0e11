"""Same seed, same frames; another seed, another culture."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pytest

from scopeloop.sim import world_of

if TYPE_CHECKING:
    from collections.abc import Callable

    from pymmcore_plus.experimental.unicore import UniMMCore

# (simulated time s, stage x um, stage y um, focus um, power mW)
PROTOCOL = [
    (0.0, 0.0, 0.0, 0.0, 2.0),
    (0.0, 300.0, -200.0, 0.0, 2.0),
    (1800.0, 0.0, 0.0, 3.0, 5.0),
    (7200.0, 300.0, -200.0, 0.0, 1.0),
]


def acquire(core: UniMMCore) -> list[np.ndarray]:
    frames = []
    for t, x, y, z, power in PROTOCOL:
        core.setProperty("SimHub", "SimTime_s", t)
        core.setXYPosition(x, y)
        core.setPosition(z)
        core.setProperty("Laser", "PowerSetpoint_mW", power)
        core.snapImage()
        frames.append(core.getImage())
    return frames


@pytest.mark.parametrize("seed", [0, 12345], ids=["seed-0", "seed-12345"])
def test_same_seed_gives_identical_frames(
    make_core: Callable[..., UniMMCore], seed: int
) -> None:
    # Arrange: two independent cores, both loaded at once.
    first, second = make_core(Seed=seed), make_core(Seed=seed)

    # Act
    a, b = acquire(first), acquire(second)

    # Assert
    for k, (fa, fb) in enumerate(zip(a, b, strict=True)):
        np.testing.assert_array_equal(fa, fb, err_msg=f"frame {k}")
    wa, wb = world_of(first), world_of(second)
    assert wa is not wb
    assert wa.culture.divisions == wb.culture.divisions
    np.testing.assert_array_equal(wa.culture.x, wb.culture.x)


def test_different_seed_gives_a_different_culture(
    make_core: Callable[..., UniMMCore],
) -> None:
    first, second = make_core(Seed=1), make_core(Seed=2)

    a, b = acquire(first), acquire(second)

    for fa, fb in zip(a, b, strict=True):
        # Not just other noise: other nuclei in other places.
        assert (
            np.corrcoef(fa.ravel().astype(float), fb.ravel().astype(float))[0, 1] < 0.3
        )
    assert len(world_of(first).culture) != len(world_of(second).culture)


def test_seed_is_read_back_and_other_devices_do_not_leak_between_cores(
    make_core: Callable[..., UniMMCore],
) -> None:
    # Arrange: one core moved and powered, a second fresh one.
    moved = make_core(Seed=4)
    moved.setXYPosition(900.0, 900.0)
    moved.setProperty("Laser", "PowerSetpoint_mW", 40.0)

    # Act
    fresh = make_core(Seed=4)

    # Assert
    assert int(fresh.getProperty("SimHub", "Seed")) == 4
    assert fresh.getXYPosition() == pytest.approx((0.0, 0.0))
    assert float(fresh.getProperty("Laser", "PowerSetpoint_mW")) == 2.0
