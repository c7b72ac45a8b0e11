"""Training and evaluation data from the simulator, with its ground truth.

A `SimClip` is a short time-lapse of one field of view, taken straight from a
`World` (no Micro-Manager in between): the noisy camera frames, the noise-free
image on the same grey scale, the instance labels, the phase of every nucleus
and the divisions. `random_clip` varies everything that changes between
samples and microscopes (nucleus size, brightness, texture, density, pixel
size, noise, light) widely, so that models trained on it hold on real images.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from scopeloop.sim import (
    ClockMode,
    CultureParams,
    NucleiView,
    SensorModel,
    World,
    render_labels,
)

if TYPE_CHECKING:
    from numpy.typing import NDArray

__all__ = ["ClipDivision", "SimClip", "random_clip", "simulate_clip"]


@dataclass(frozen=True, slots=True)
class ClipDivision:
    """A division in a clip: the daughters are first seen in frame `frame`."""

    frame: int
    y: float
    x: float
    mother_id: int
    daughter_ids: tuple[int, int]


@dataclass(frozen=True, slots=True)
class SimClip:
    """A simulated time-lapse of one field of view with its ground truth.

    `noisy` and `clean` are (T, Y, X) float32 on the camera's grey scale
    (`clean` is the expected grey level without noise, offset included);
    `labels` are (T, Y, X) uint32 nucleus ids; `nuclei[t]` describes every
    nucleus near frame t (ids, centres in pixels, `phase`).
    """

    noisy: NDArray[np.float32]
    clean: NDArray[np.float32]
    labels: NDArray[np.uint32]
    nuclei: tuple[NucleiView, ...]
    divisions: tuple[ClipDivision, ...]
    interval_s: float
    pixel_um: float
    offset_adu: float
    gain_adu_per_e: float

    def __len__(self) -> int:
        return int(self.noisy.shape[0])

    def phase_image(self, t: int) -> NDArray[np.int8]:
        """Per pixel, the `Phase` of the nucleus there (-1 on background)."""
        view = self.nuclei[t]
        lut = np.full(int(max(view.ids.max(initial=0), 0)) + 1, -1, np.int8)
        lut[view.ids] = view.phase
        labels = self.labels[t]
        out = np.full(labels.shape, -1, np.int8)
        inside = (labels > 0) & (labels < lut.size)
        out[inside] = lut[labels[inside]]
        return out


def simulate_clip(
    params: CultureParams,
    sensor: SensorModel,
    *,
    shape: tuple[int, int] = (128, 128),
    frames: int = 8,
    interval_s: float = 300.0,
    start_s: float = 0.0,
    pixel_um: float = 0.5,
    laser_power_mw: float = 1.0,
    exposure_ms: float = 50.0,
    stage_um: tuple[float, float] | None = None,
    focus_um: float = 0.0,
) -> SimClip:
    """Image one field of view of a fresh culture `frames` times.

    The first frame is taken at `start_s` of simulated time, the others every
    `interval_s`. The stage sits at `stage_um` (x, y), by default the middle of
    the slide.
    """
    world = World(params, clock=ClockMode.MANUAL)
    light = world.light
    light.laser_power_mw = laser_power_mw
    light.shutter_open = True
    x, y = stage_um or (params.slide_width_um / 2, params.slide_height_um / 2)
    light.stage_x_um, light.stage_y_um, light.focus_um = x, y, focus_um
    known_divisions = 0
    noisy = np.empty((frames, *shape), np.float32)
    clean = np.empty((frames, *shape), np.float32)
    labels = np.empty((frames, *shape), np.uint32)
    views: list[NucleiView] = []
    divisions: list[ClipDivision] = []
    frame_u16 = np.empty(shape, np.uint16)
    qe, gain = sensor.quantum_efficiency, sensor.gain_adu_per_e
    dark_e = sensor.dark_e_per_s * exposure_ms / 1000
    for t in range(frames):
        world.set_time(start_s + t * interval_s)
        photons, background, record = world.expose(
            shape=shape, binning=1, pixel_um=pixel_um, exposure_ms=exposure_ms
        )
        sensor.read(photons, background, exposure_ms, world.noise_rng, frame_u16)
        noisy[t] = frame_u16
        electrons = np.minimum(qe * (photons + background) + dark_e, sensor.full_well_e)
        clean[t] = np.minimum(sensor.offset_adu + gain * electrons, 65535.0)
        labels[t] = render_labels(record.nuclei, shape)
        views.append(record.nuclei)
        new = world.culture.divisions[known_divisions:]
        known_divisions = len(world.culture.divisions)
        in_view = record.nuclei
        for division in new if t > 0 else ():
            hits = np.isin(in_view.ids, division.daughter_ids)
            if hits.sum() < 2:
                continue
            ys, xs = in_view.y_px[hits], in_view.x_px[hits]
            if not _inside(float(ys.mean()), float(xs.mean()), shape):
                continue
            divisions.append(
                ClipDivision(
                    frame=t,
                    y=float(ys.mean()),
                    x=float(xs.mean()),
                    mother_id=division.mother_id,
                    daughter_ids=division.daughter_ids,
                )
            )
    return SimClip(
        noisy=noisy,
        clean=clean,
        labels=labels,
        nuclei=tuple(views),
        divisions=tuple(divisions),
        interval_s=interval_s,
        pixel_um=pixel_um,
        offset_adu=sensor.offset_adu,
        gain_adu_per_e=gain,
    )


def _inside(y: float, x: float, shape: tuple[int, int]) -> bool:
    return 0 <= y < shape[0] and 0 <= x < shape[1]


def random_clip(
    rng: np.random.Generator,
    *,
    shape: tuple[int, int] = (128, 128),
    frames: int = 8,
    interval_s: float | None = None,
    fast_cycle: bool = True,
) -> SimClip:
    """A clip of a culture and a camera drawn at random over a wide range.

    Varies nucleus size and shape spread, expression and its spread, texture,
    density, pixel size, background, read noise, gain, offset and light (so
    signal-to-noise spans very dim to bright). With `fast_cycle` the cell
    cycle is short, so that many nuclei are in mitosis (for training the
    mitosis and division stages).
    """
    pixel_um = float(rng.uniform(0.3, 1.0))
    diameter = float(rng.uniform(6.0, 16.0))
    # One clip in five has cells dying of light part-way (pyknotic nuclei).
    death = 1e9 if rng.uniform() < 0.8 else float(rng.uniform(0.5, 5.0))
    field_um = max(shape) * pixel_um
    slide = float(max(4 * field_um, 150.0))
    params = CultureParams(
        seed=int(rng.integers(0, 2**31 - 1)),
        slide_width_um=slide,
        slide_height_um=slide,
        # Between ~10% and ~75% of the slide covered by nuclei.
        density_per_mm2=min(
            float(rng.uniform(0.2, 1.6) * 0.6 / (diameter / 1000) ** 2), 20_000.0
        ),
        nucleus_diameter_um=diameter,
        nucleus_size_cv=float(rng.uniform(0.05, 0.25)),
        cycle_h=float(rng.uniform(1.5, 4.0) if fast_cycle else rng.uniform(10, 30)),
        mitosis_min=float(rng.uniform(30, 90)),
        brightness=float(rng.uniform(0.05, 2.0)),
        brightness_cv=float(rng.uniform(0.1, 0.5)),
        texture=float(rng.uniform(0.0, 0.6)),
        background=float(rng.uniform(0.0, 0.05)),
        bleach_dose_mj=1e9,
        arrest_dose_mj=death / 2,
        death_dose_mj=death,
    )
    sensor = SensorModel(
        offset_adu=float(rng.choice([0.0, 100.0, 500.0])),
        gain_adu_per_e=float(rng.uniform(0.3, 3.0)),
        read_noise_e=float(rng.uniform(0.5, 4.0)),
    )
    light_mw_ms = float(np.exp(rng.uniform(np.log(5.0), np.log(500.0))))
    interval = (
        interval_s
        if interval_s is not None
        else float(rng.uniform(60, 240) * params.mitosis_min / 45)
    )
    return simulate_clip(
        params,
        sensor,
        shape=shape,
        frames=frames,
        interval_s=interval,
        start_s=float(rng.uniform(0, 3600)),
        pixel_um=pixel_um,
        laser_power_mw=light_mw_ms / 50.0,
        exposure_ms=50.0,
        stage_um=(float(rng.uniform(0, slide)), float(rng.uniform(0, slide))),
        focus_um=float(rng.normal(0, 0.5)),
    )
