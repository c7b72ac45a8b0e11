"""A culture of nuclei that move, grow, divide, bleach and suffer from light.

Everything is vectorised over cells (one array per attribute). Time is in
seconds of simulated time, lengths in micrometres, dose in millijoules
(laser power in mW x exposure in s, delivered to the illuminated field).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import IntEnum
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
from scipy.spatial import cKDTree

if TYPE_CHECKING:
    from numpy.typing import NDArray

    from ._params import CultureParams

__all__ = ["Culture", "Division", "NucleiView", "Phase", "wrapped_offset"]

_T = TypeVar("_T", float, "NDArray[np.float64]")

# Fractions of mitosis_min spent in each stage. Prophase and metaphase belong to
# the mother; the daughters are born at anaphase onset. Telophase (daughters
# decondensing) is counted after mitosis, in early G1.
PROPHASE_FRACTION = 0.45
METAPHASE_FRACTION = 0.30
ANAPHASE_FRACTION = 0.25
TELOPHASE_FRACTION = 0.30

MAX_STEP_S = 30.0
_TEXTURE_BANK_SIZE = 32


def wrapped_offset(value: _T, origin: float, period: float) -> _T:
    """`value - origin` on a slide that wraps around every `period`.

    The result lies in [-period / 2, period / 2).
    """
    return (value - origin + period / 2) % period - period / 2


class Phase(IntEnum):
    """Stage of a nucleus, as a biologist would name what the image shows."""

    INTERPHASE = 0
    PROPHASE = 1
    METAPHASE = 2
    ANAPHASE = 3
    TELOPHASE = 4
    DEAD = 5

    @property
    def label(self) -> str:
        """Lower-case name, as written to ground-truth tables."""
        return self.name.lower()


@dataclass(frozen=True, slots=True)
class Division:
    """A mother nucleus split into two daughters at anaphase onset."""

    time_s: float
    x_um: float
    y_um: float
    mother_id: int
    daughter_ids: tuple[int, int]


@dataclass(frozen=True, slots=True)
class NucleiView:
    """What a field of view shows: one row per nucleus, geometry in pixels.

    `y_px`, `x_px` are centres in image coordinates (row, column); `a_px` is
    the semi-axis along `angle_rad` (measured from the x axis towards y), `b_px`
    the other one. `intensity` is photons per pixel per mW per ms at the centre
    of the nucleus before texture, after bleaching.
    """

    ids: NDArray[np.int64]
    y_px: NDArray[np.float64]
    x_px: NDArray[np.float64]
    a_px: NDArray[np.float64]
    b_px: NDArray[np.float64]
    angle_rad: NDArray[np.float64]
    intensity: NDArray[np.float64]
    texture: NDArray[np.float64]
    texture_id: NDArray[np.int64]
    phase: NDArray[np.int8]
    dose_mj: NDArray[np.float64]
    y_um: NDArray[np.float64]
    x_um: NDArray[np.float64]

    def __len__(self) -> int:
        return int(self.ids.size)


class Culture:
    """The population of nuclei on the slide, advanced in steps of simulated time."""

    def __init__(self, params: CultureParams) -> None:
        self.params = params
        self.rng = np.random.default_rng(params.seed)
        self.time_s = 0.0
        self.divisions: list[Division] = []
        self._next_id = 1
        p = params
        n = self.rng.poisson(
            p.density_per_mm2 * p.slide_width_um * p.slide_height_um / 1e6
        )
        self._m = p.mitosis_min * 60.0
        self.cells: dict[str, NDArray[Any]] = self._new_cells(n)
        self.x[:] = self.rng.uniform(0, p.slide_width_um, n)
        self.y[:] = self.rng.uniform(0, p.slide_height_um, n)
        # Steady-state age distribution of an exponentially growing population:
        # p(a) ~ 2^(-a/T), so division rate starts at its stationary value.
        u = self.rng.uniform(0, 1, n)
        age = -self.cells["cycle_s"] * np.log2(1 - u / 2)
        young = (ANAPHASE_FRACTION + TELOPHASE_FRACTION) * self._m
        self.cells["age_s"][:] = np.maximum(age, young)
        self._separate(iterations=20)

    # -- construction -------------------------------------------------------

    def _new_cells(self, n: int) -> dict[str, NDArray[Any]]:
        p, rng = self.params, self.rng
        ids = np.arange(self._next_id, self._next_id + n, dtype=np.int64)
        self._next_id += n
        size = np.clip(rng.normal(1.0, p.nucleus_size_cv, n), 0.5, 2.0)
        cycle = np.clip(rng.normal(1.0, p.cycle_cv, n), 0.5, 2.0) * p.cycle_h * 3600
        cycle = np.maximum(cycle, 1.5 * (1 + TELOPHASE_FRACTION) * self._m)
        expression = np.clip(rng.lognormal(0.0, p.brightness_cv, n), 0.2, 5.0)
        return {
            "id": ids,
            "mother": np.zeros(n, np.int64),
            "x": np.zeros(n),
            "y": np.zeros(n),
            "vx": np.zeros(n),
            "vy": np.zeros(n),
            "age_s": np.zeros(n),
            "cycle_s": cycle,
            "r0": size * p.nucleus_diameter_um / 2,
            "elongation": rng.uniform(0.0, 0.2, n),
            "theta": rng.uniform(0, np.pi, n),
            "spindle": rng.uniform(0, 2 * np.pi, n),
            "expression": expression,
            "fluor": np.ones(n),
            "dose_mj": np.zeros(n),
            "arrested": np.zeros(n, bool),
            "dead_s": np.full(n, np.nan),
            "texture_id": rng.integers(0, _TEXTURE_BANK_SIZE, n).astype(np.int64),
        }

    # -- attribute shortcuts ------------------------------------------------

    @property
    def x(self) -> NDArray[np.float64]:
        """Centre x (um) of every nucleus, wrapped onto the slide."""
        return self.cells["x"]

    @property
    def y(self) -> NDArray[np.float64]:
        """Centre y (um) of every nucleus, wrapped onto the slide."""
        return self.cells["y"]

    @property
    def ids(self) -> NDArray[np.int64]:
        """Unique id of every nucleus (never reused)."""
        return self.cells["id"]

    def __len__(self) -> int:
        return int(self.ids.size)

    # -- phases and shapes --------------------------------------------------

    def phases(self) -> NDArray[np.int8]:
        """The `Phase` of every nucleus now."""
        c, m = self.cells, self._m
        age, cycle = c["age_s"], c["cycle_s"]
        phase = np.full(len(self), Phase.INTERPHASE, np.int8)
        daughter = c["mother"] > 0
        phase[daughter & (age < (ANAPHASE_FRACTION + TELOPHASE_FRACTION) * m)] = (
            Phase.TELOPHASE
        )
        phase[daughter & (age < ANAPHASE_FRACTION * m)] = Phase.ANAPHASE
        to_division = cycle - age
        phase[to_division <= (PROPHASE_FRACTION + METAPHASE_FRACTION) * m] = (
            Phase.PROPHASE
        )
        phase[to_division <= METAPHASE_FRACTION * m] = Phase.METAPHASE
        phase[~np.isnan(c["dead_s"])] = Phase.DEAD
        return phase

    def _shapes(
        self, idx: NDArray[np.intp], phase: NDArray[np.int8]
    ) -> tuple[NDArray[np.float64], ...]:
        """Semi-axes (um), angle, relative brightness and texture of cells `idx`."""
        c, m, p = self.cells, self._m, self.params
        age = c["age_s"][idx].astype(float)
        cycle = c["cycle_s"][idx].astype(float)
        r0 = c["r0"][idx].astype(float)
        growth = np.clip(age / cycle, 0, 1)
        r = r0 * np.cbrt(1 + growth)
        rm = r0 * np.cbrt(2.0)  # radius at mitosis entry (mother) or of mother
        e = c["elongation"][idx].astype(float)
        a, b = r * (1 + e), r * (1 - e)
        angle = c["theta"][idx].astype(float)
        bright = np.cbrt(1 + growth)
        tex = np.full(idx.size, p.texture)

        ph = phase
        pro = ph == Phase.PROPHASE
        if pro.any():
            q = 1 - (cycle[pro] - age[pro] - METAPHASE_FRACTION * m) / (
                PROPHASE_FRACTION * m
            )
            q = np.clip(q, 0, 1)
            shrink = 1 - 0.2 * q
            a[pro] = rm[pro] * shrink * (1 + e[pro] * (1 - q))
            b[pro] = rm[pro] * shrink * (1 - e[pro] * (1 - q))
            bright[pro] = np.cbrt(2.0) * (1 + 0.9 * q)
            tex[pro] = p.texture + (0.65 - p.texture) * q
        meta = ph == Phase.METAPHASE
        if meta.any():
            a[meta], b[meta] = 0.32 * rm[meta], 0.9 * rm[meta]
            angle[meta] = c["spindle"][idx][meta]
            bright[meta], tex[meta] = 2.8, 0.3
        # Daughters: r0 is the daughter's own birth radius; the mother's radius
        # at mitosis was about r0 * 2^(1/3) * 2^(1/3).
        rmo = r0 * np.cbrt(4.0)
        ana = ph == Phase.ANAPHASE
        if ana.any():
            a[ana], b[ana] = 0.26 * rmo[ana], 0.75 * rmo[ana]
            angle[ana] = c["spindle"][idx][ana]
            bright[ana], tex[ana] = 2.5, 0.3
        telo = ph == Phase.TELOPHASE
        if telo.any():
            q = np.clip(
                (age[telo] - ANAPHASE_FRACTION * m) / (TELOPHASE_FRACTION * m), 0, 1
            )
            a[telo] = 0.26 * rmo[telo] + (r[telo] - 0.26 * rmo[telo]) * q
            b[telo] = 0.75 * rmo[telo] + (r[telo] - 0.75 * rmo[telo]) * q
            angle[telo] = c["spindle"][idx][telo]
            bright[telo] = 2.5 + (bright[telo] - 2.5) * q
            tex[telo] = 0.3 + (p.texture - 0.3) * q
        dead = ph == Phase.DEAD
        if dead.any():
            since = self.time_s - c["dead_s"][idx][dead].astype(float)
            a[dead] = b[dead] = 0.55 * r[dead]
            bright[dead] = 1.8 * np.exp(-since / (6 * 3600))
            tex[dead] = 0.5
        return a, b, angle, bright, tex

    # -- time ---------------------------------------------------------------

    def advance_to(self, time_s: float) -> None:
        """Advance the culture to `time_s` in steps of at most 30 s."""
        while self.time_s < time_s - 1e-9:
            self._step(min(MAX_STEP_S, time_s - self.time_s))

    def _step(self, dt: float) -> None:
        c, p, rng = self.cells, self.params, self.rng
        n = len(self)
        alive = np.isnan(c["dead_s"])
        phase = self.phases()
        # Arrested cells (dose past ArrestDose) stay in interphase: their clock
        # stops before mitosis, as in a DNA-damage G2 arrest.
        cycling = alive & ~(c["arrested"] & (phase == Phase.INTERPHASE))
        c["age_s"][cycling] += dt

        # Persistent random walk (Ornstein-Uhlenbeck velocity), slowed in mitosis.
        tau = p.persistence_min * 60
        sigma = p.motility_um_per_min / 60 / math.sqrt(2)
        decay = math.exp(-dt / tau)
        kick = sigma * math.sqrt(1 - decay**2)
        for v in ("vx", "vy"):
            c[v] = c[v] * decay + kick * rng.standard_normal(n)
        mobility = np.where(alive, 1.0, 0.0)
        mobility[(phase != Phase.INTERPHASE) & alive] = 0.2
        dx = c["vx"] * mobility * dt + p.drift_x_um_per_h / 3600 * dt
        dy = c["vy"] * mobility * dt + p.drift_y_um_per_h / 3600 * dt
        # Sisters move apart along the spindle during anaphase.
        ana = phase == Phase.ANAPHASE
        if ana.any():
            speed = 0.65 * c["r0"][ana] * np.cbrt(4.0) / (ANAPHASE_FRACTION * self._m)
            dx[ana] += speed * np.cos(c["spindle"][ana]) * dt
            dy[ana] += speed * np.sin(c["spindle"][ana]) * dt
        c["x"] = (c["x"] + dx) % p.slide_width_um
        c["y"] = (c["y"] + dy) % p.slide_height_um
        self.time_s += dt
        self._divide()
        self._separate()

    def _divide(self) -> None:
        c = self.cells
        ready = np.flatnonzero(np.isnan(c["dead_s"]) & (c["age_s"] >= c["cycle_s"]))
        if ready.size == 0:
            return
        n = ready.size
        second = self._new_cells(n)
        first = self._new_cells(n)
        overshoot = c["age_s"][ready] - c["cycle_s"][ready]
        axis = c["spindle"][ready].astype(float)
        rmo = c["r0"][ready].astype(float) * np.cbrt(2.0)
        half_gap = 0.38 * rmo
        for d, sign in ((first, 1.0), (second, -1.0)):
            d["mother"][:] = c["id"][ready]
            d["age_s"][:] = overshoot
            # Daughters inherit size, expression, bleaching and light damage.
            d["r0"][:] = c["r0"][ready] * np.clip(self.rng.normal(1, 0.05, n), 0.8, 1.2)
            d["expression"][:] = c["expression"][ready]
            d["fluor"][:] = c["fluor"][ready]
            d["dose_mj"][:] = c["dose_mj"][ready]
            d["arrested"][:] = c["arrested"][ready]
            d["spindle"][:] = axis if sign > 0 else (axis + np.pi) % (2 * np.pi)
            d["x"][:] = (
                c["x"][ready] + sign * half_gap * np.cos(axis)
            ) % self.params.slide_width_um
            d["y"][:] = (
                c["y"][ready] + sign * half_gap * np.sin(axis)
            ) % self.params.slide_height_um
        # Record them in the order they happened (earliest first) within the step.
        for k in np.argsort(-np.asarray(overshoot, dtype=float), kind="stable"):
            i = ready[k]
            self.divisions.append(
                Division(
                    time_s=float(self.time_s - overshoot[k]),
                    x_um=float(c["x"][i]),
                    y_um=float(c["y"][i]),
                    mother_id=int(c["id"][i]),
                    daughter_ids=(int(first["id"][k]), int(second["id"][k])),
                )
            )
        keep = np.ones(len(self), bool)
        keep[ready] = False
        self.cells = {
            k: np.concatenate([v[keep], first[k], second[k]]) for k, v in c.items()
        }

    def _separate(self, iterations: int = 1) -> None:
        """Push apart interphase nuclei that overlap (cells do not pile up)."""
        c, p = self.cells, self.params
        box = (p.slide_width_um, p.slide_height_um)
        reach = 1.3 * p.nucleus_diameter_um
        if len(self) < 2 or reach * 2 >= min(box):
            return
        radius = c["r0"] * np.cbrt(2.0) * 1.05
        for _ in range(iterations):
            pts = np.column_stack([c["x"], c["y"]])
            pairs = cKDTree(pts, boxsize=box).query_pairs(reach, output_type="ndarray")
            if pairs.size == 0:
                return
            i, j = pairs[:, 0], pairs[:, 1]
            sisters = (c["mother"][i] > 0) & (c["mother"][i] == c["mother"][j])
            i, j = i[~sisters], j[~sisters]
            d = pts[j] - pts[i]
            d -= np.round(d / box) * box
            dist = np.hypot(d[:, 0], d[:, 1]) + 1e-9
            overlap = radius[i] + radius[j] - dist
            hit = overlap > 0
            if not hit.any():
                return
            push = (0.5 * overlap[hit] / dist[hit])[:, None] * d[hit]
            shift = np.zeros_like(pts)
            np.add.at(shift, i[hit], -push)
            np.add.at(shift, j[hit], push)
            movable = np.isnan(c["dead_s"])[:, None]
            c["x"] = (c["x"] + shift[:, 0] * movable[:, 0]) % box[0]
            c["y"] = (c["y"] + shift[:, 1] * movable[:, 0]) % box[1]

    # -- light --------------------------------------------------------------

    def in_field(
        self,
        centre_x_um: float,
        centre_y_um: float,
        width_um: float,
        height_um: float,
        margin_um: float = 0.0,
    ) -> tuple[NDArray[np.intp], NDArray[np.float64], NDArray[np.float64]]:
        """Indices of nuclei in a field, and their offsets (um) from its centre.

        The slide wraps around, so offsets are taken modulo the slide size.
        """
        p = self.params
        dx = wrapped_offset(self.x, centre_x_um, p.slide_width_um)
        dy = wrapped_offset(self.y, centre_y_um, p.slide_height_um)
        inside = (np.abs(dx) <= width_um / 2 + margin_um) & (
            np.abs(dy) <= height_um / 2 + margin_um
        )
        idx = np.flatnonzero(inside)
        return idx, dx[idx], dy[idx]

    def illuminate(
        self,
        centre_x_um: float,
        centre_y_um: float,
        width_um: float,
        height_um: float,
        dose_mj: float,
    ) -> int:
        """Deliver `dose_mj` to every nucleus whose centre is in the field.

        Bleaches their fluorophores and applies phototoxicity. Returns how many
        nuclei were hit.
        """
        if dose_mj <= 0:
            return 0
        c, p = self.cells, self.params
        idx, _, _ = self.in_field(centre_x_um, centre_y_um, width_um, height_um)
        c["dose_mj"][idx] += dose_mj
        c["fluor"][idx] *= math.exp(-dose_mj / p.bleach_dose_mj)
        c["arrested"][idx] |= c["dose_mj"][idx] >= p.arrest_dose_mj
        dying = idx[(c["dose_mj"][idx] >= p.death_dose_mj) & np.isnan(c["dead_s"][idx])]
        c["dead_s"][dying] = self.time_s
        return int(idx.size)

    # -- what the camera sees -----------------------------------------------

    def view(
        self,
        centre_x_um: float,
        centre_y_um: float,
        shape: tuple[int, int],
        pixel_um: float,
    ) -> NucleiView:
        """The nuclei visible in a field of `shape` pixels centred on the stage."""
        h, w = shape
        margin = 1.5 * self.params.nucleus_diameter_um
        idx, dx, dy = self.in_field(
            centre_x_um, centre_y_um, w * pixel_um, h * pixel_um, margin
        )
        phase = self.phases()[idx]
        a, b, angle, bright, tex = self._shapes(idx, phase)
        c = self.cells
        intensity = (
            self.params.brightness * c["expression"][idx] * c["fluor"][idx] * bright
        )
        return NucleiView(
            ids=c["id"][idx].astype(np.int64),
            y_px=dy / pixel_um + h / 2 - 0.5,
            x_px=dx / pixel_um + w / 2 - 0.5,
            a_px=a / pixel_um,
            b_px=b / pixel_um,
            angle_rad=angle,
            intensity=intensity.astype(float),
            texture=tex,
            texture_id=c["texture_id"][idx].astype(np.int64),
            phase=phase,
            dose_mj=c["dose_mj"][idx].astype(float),
            y_um=c["y"][idx].astype(float),
            x_um=c["x"][idx].astype(float),
        )
