"""pymmcore-plus's MDA runner drives the simulated rig; defocus blurs."""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest
import useq
from scipy import ndimage

from scopeloop.sim import world_of

if TYPE_CHECKING:
    from pymmcore_plus.experimental.unicore import UniMMCore

POSITIONS = [(0.0, 0.0, 0.0), (400.0, 0.0, 1.0), (0.0, -400.0, -1.0)]


def run_and_collect(
    core: UniMMCore, sequence: useq.MDASequence
) -> list[tuple[Any, ...]]:
    frames: list[tuple[Any, ...]] = []

    def on_frame(image: np.ndarray, event: useq.MDAEvent, meta: dict[str, Any]) -> None:
        frames.append((image.shape, image.dtype, dict(event.index), event, meta))

    core.mda.events.frameReady.connect(on_frame)
    try:
        core.mda.run(sequence)
    finally:
        core.mda.events.frameReady.disconnect(on_frame)
    return frames


@pytest.mark.parametrize(
    ("loops", "z_range", "z_step", "binning", "axis_order"),
    [
        pytest.param(2, 4.0, 2.0, 1, "tpzc", id="2t-3p-3z"),
        pytest.param(3, 2.0, 1.0, 2, "tpzc", id="3t-3p-3z-bin2"),
        pytest.param(1, 0.0, 1.0, 1, "tpzc", id="1t-3p-1z"),
        pytest.param(2, 3.0, 1.0, 1, "tzpc", id="2t-3p-4z-order-tzp"),
    ],
)
def test_mda_with_positions_time_and_z_delivers_every_frame(
    demo_core: UniMMCore,
    loops: int,
    z_range: float,
    z_step: float,
    binning: int,
    axis_order: str,
) -> None:
    # Arrange
    core = demo_core
    core.setProperty("Camera", "Binning", binning)
    sequence = useq.MDASequence(
        stage_positions=POSITIONS,
        time_plan={"interval": 0, "loops": loops},
        z_plan={"range": z_range, "step": z_step},
        axis_order=axis_order,
    )
    n_z = round(z_range / z_step) + 1
    shape = (512 // binning, 512 // binning)

    # Act
    frames = run_and_collect(core, sequence)

    # Assert: one frame per (t, p, z), each of the camera's shape.
    assert len(frames) == loops * len(POSITIONS) * n_z
    assert {f[0] for f in frames} == {shape}
    assert {f[1] for f in frames} == {np.dtype(np.uint16)}
    seen = {(i.get("t", 0), i.get("p", 0), i.get("z", 0)) for _, _, i, _, _ in frames}
    assert seen == set(
        itertools.product(range(loops), range(len(POSITIONS)), range(n_z))
    )
    # The devices went where the events said when the camera exposed.
    exposures = world_of(core).exposures
    assert len(exposures) == len(frames)
    for (_, _, _, event, _), record in zip(frames, exposures, strict=True):
        assert (record.stage_x_um, record.stage_y_um) == pytest.approx(
            (event.x_pos, event.y_pos)
        )
        assert record.focus_um == pytest.approx(event.z_pos)
        assert record.shape == shape


def test_mda_frame_metadata_describes_the_rig(demo_core: UniMMCore) -> None:
    demo_core.setExposure(20.0)
    sequence = useq.MDASequence(
        stage_positions=POSITIONS[:2], time_plan={"interval": 0, "loops": 2}
    )

    frames = run_and_collect(demo_core, sequence)

    assert len(frames) == 4
    for *_, event, meta in frames:
        assert meta["camera_device"] == "Camera"
        assert meta["exposure_ms"] == pytest.approx(20.0)
        assert meta["pixel_size_um"] == pytest.approx(0.5)
        assert (meta["position"]["x"], meta["position"]["y"]) == pytest.approx(
            (event.x_pos, event.y_pos)
        )


def sharpness(image: np.ndarray) -> tuple[float, float]:
    """Peak and high-frequency content of a lightly smoothed image (noise damped)."""
    smooth = ndimage.gaussian_filter(image.astype(np.float64), 1.0)
    return float(smooth.max()), float(np.abs(ndimage.laplace(smooth)).mean())


def test_defocus_lowers_peak_and_high_frequencies(demo_core: UniMMCore) -> None:
    # Arrange: bright, same field, same time; sharp at SampleZ_um = 0.
    core = demo_core
    core.setProperty("Laser", "PowerSetpoint_mW", 20.0)
    core.setExposure(100.0)
    heights = [0.0, 2.0, 6.0, 20.0]

    # Act
    results = []
    for z in heights:
        core.setPosition(z)
        core.snapImage()
        results.append(sharpness(core.getImage()))
    core.setPosition(-6.0)
    core.snapImage()
    below = sharpness(core.getImage())

    # Assert: monotonic loss of detail away from focus, on both sides.
    peaks = [p for p, _ in results]
    detail = [d for _, d in results]
    assert peaks == sorted(peaks, reverse=True)
    assert peaks[-1] < 0.5 * peaks[0]
    assert detail[1] < 0.8 * detail[0]
    assert detail[-1] < 0.5 * detail[0]
    assert below[0] == pytest.approx(peaks[2], rel=0.1)


def test_z_stack_through_mda_peaks_at_sample_focus(demo_core: UniMMCore) -> None:
    # Arrange: the sample sits at z = 0; stack from -8 to +8 um around z = 0.
    core = demo_core
    core.setProperty("Laser", "PowerSetpoint_mW", 20.0)
    core.setExposure(100.0)
    images: dict[int, np.ndarray] = {}
    core.mda.events.frameReady.connect(
        lambda im, ev, _m: images.__setitem__(ev.index["z"], im)
    )
    sequence = useq.MDASequence(
        stage_positions=[(100.0, 100.0, 0.0)], z_plan={"range": 16.0, "step": 4.0}
    )

    # Act
    core.mda.run(sequence)

    # Assert
    detail = [sharpness(images[k])[1] for k in sorted(images)]
    assert len(detail) == 5
    assert int(np.argmax(detail)) == 2  # the middle plane, z = 0
