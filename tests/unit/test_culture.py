"""The culture model: division rate, mitosis phases, light damage, geometry."""

from __future__ import annotations

import math

import numpy as np
import pytest

from scopeloop.sim import Culture, CultureParams, Phase
from scopeloop.sim._culture import (
    ANAPHASE_FRACTION,
    METAPHASE_FRACTION,
    PROPHASE_FRACTION,
    TELOPHASE_FRACTION,
)

HOUR = 3600.0


def small_culture(**overrides: float) -> Culture:
    """A 1 mm x 1 mm slide: a few thousand cells at most, quick to advance."""
    values = {"slide_width_um": 1000.0, "slide_height_um": 1000.0, **overrides}
    return Culture(CultureParams(**values))


@pytest.mark.parametrize(
    ("cycle_h", "hours", "seed"),
    [
        pytest.param(20.0, 6.0, 1, id="cycle-20h-6h"),
        pytest.param(10.0, 6.0, 2, id="cycle-10h-6h"),
        pytest.param(40.0, 6.0, 3, id="cycle-40h-6h"),
    ],
)
def test_divisions_follow_exponential_growth(
    cycle_h: float, hours: float, seed: int
) -> None:
    # Arrange: ~2000 cells in steady-state growth.
    culture = small_culture(density_per_mm2=2000.0, cycle_h=cycle_h, seed=seed)
    n0 = len(culture)

    # Act
    culture.advance_to(hours * HOUR)

    # Assert: N0 (2^(t/T) - 1) divisions, within 4 sigma (counting noise) plus
    # 2 % (the growth law is exact only without cycle-length spread).
    expected = n0 * (2 ** (hours / cycle_h) - 1)
    observed = len(culture.divisions)
    assert abs(observed - expected) <= 4 * math.sqrt(expected) + 0.02 * expected
    # Every division adds one cell: nobody is lost or duplicated.
    assert len(culture) == n0 + observed
    assert len(np.unique(culture.ids)) == len(culture)


def test_shorter_cycle_gives_proportionally_more_divisions() -> None:
    # Arrange: the same culture (seed) with a cycle of 24 h and of 12 h.
    slow = small_culture(density_per_mm2=2000.0, cycle_h=24.0, seed=5)
    fast = small_culture(density_per_mm2=2000.0, cycle_h=12.0, seed=5)

    # Act
    slow.advance_to(4 * HOUR)
    fast.advance_to(4 * HOUR)

    # Assert: (2^(4/12) - 1) / (2^(4/24) - 1) = 2.13
    ratio = len(fast.divisions) / len(slow.divisions)
    expected = (2 ** (4 / 12) - 1) / (2 ** (4 / 24) - 1)
    assert ratio == pytest.approx(expected, rel=0.15)


def _phase_of(culture: Culture, cell_id: int) -> Phase | None:
    where = np.flatnonzero(culture.ids == cell_id)
    return Phase(int(culture.phases()[where[0]])) if where.size else None


def _first_interphase_cell_to_divide(culture: Culture, mitosis_s: float) -> int:
    """Id of the interphase cell that enters prophase soonest (at least 1 min away)."""
    to_division = culture.cells["cycle_s"] - culture.cells["age_s"]
    lead = (PROPHASE_FRACTION + METAPHASE_FRACTION) * mitosis_s + 60
    candidates = np.flatnonzero(
        (culture.phases() == Phase.INTERPHASE) & (to_division > lead)
    )
    return int(culture.ids[candidates[np.argmin(to_division[candidates])]])


@pytest.mark.parametrize(
    ("mitosis_min", "seed"),
    [
        pytest.param(45.0, 3, id="mitosis-45min"),
        pytest.param(90.0, 4, id="mitosis-90min"),
    ],
)
def test_mitosis_phases_in_order_with_configured_durations(
    mitosis_min: float, seed: int
) -> None:
    # Arrange: a small culture and the next cell to divide.
    culture = Culture(
        CultureParams(
            seed=seed,
            slide_width_um=300,
            slide_height_um=300,
            density_per_mm2=600,
            mitosis_min=mitosis_min,
            cycle_h=10,
        )
    )
    mitosis_s = mitosis_min * 60
    mother = _first_interphase_cell_to_divide(culture, mitosis_s)
    step = 5.0

    # Act: follow the mother, then its daughters, in 5 s steps.
    timeline: list[tuple[float, Phase | None, Phase | None, Phase | None]] = []
    daughters: tuple[int, int] | None = None
    t = 0.0
    while t < 48 * HOUR:
        t += step
        culture.advance_to(t)
        if daughters is None:
            found = [d for d in culture.divisions if d.mother_id == mother]
            daughters = found[0].daughter_ids if found else None
        a, b = daughters if daughters else (None, None)
        state = (
            _phase_of(culture, mother),
            _phase_of(culture, a) if a else None,
            _phase_of(culture, b) if b else None,
        )
        timeline.append((t, *state))
        if state[1] is Phase.INTERPHASE and state[2] is Phase.INTERPHASE:
            break

    # Assert: the sequence of stages, with sisters in step.
    assert daughters is not None, "the cell never divided"
    runs: list[tuple[Phase, float]] = []  # (stage, first time seen)
    for t_, m, a_, b_ in timeline:
        assert a_ == b_, f"sisters out of step at {t_} s: {a_} vs {b_}"
        stage = m if m is not None else a_
        assert stage is not None
        assert not (m is not None and a_ is not None), "mother and daughters coexist"
        if not runs or runs[-1][0] != stage:
            runs.append((stage, t_))
    assert [s for s, _ in runs] == [
        Phase.INTERPHASE,
        Phase.PROPHASE,
        Phase.METAPHASE,
        Phase.ANAPHASE,
        Phase.TELOPHASE,
        Phase.INTERPHASE,
    ]
    durations = {
        s: runs[i + 1][1] - runs[i][1] for i, (s, _) in enumerate(runs[1:-1], 1)
    }
    fractions = {
        Phase.PROPHASE: PROPHASE_FRACTION,
        Phase.METAPHASE: METAPHASE_FRACTION,
        Phase.ANAPHASE: ANAPHASE_FRACTION,
        Phase.TELOPHASE: TELOPHASE_FRACTION,
    }
    for stage, fraction in fractions.items():
        assert durations[stage] == pytest.approx(
            fraction * mitosis_s, abs=step + 1e-6
        ), stage
    # Prophase to the end of anaphase is Mitosis_min.
    mitosis = sum(
        durations[s] for s in (Phase.PROPHASE, Phase.METAPHASE, Phase.ANAPHASE)
    )
    assert mitosis == pytest.approx(mitosis_s, abs=step + 1e-6)


def test_division_is_recorded_where_and_when_the_daughters_appear() -> None:
    culture = small_culture(density_per_mm2=600.0, seed=11)
    before = set(culture.ids.tolist())

    culture.advance_to(2 * HOUR)

    assert culture.divisions, "no division in 2 h"
    ids = culture.ids
    for d in culture.divisions:
        assert 0 < d.time_s <= 2 * HOUR
        assert d.mother_id not in ids  # mothers are replaced by their daughters
        assert d.mother_id in before or d.mother_id > max(before)
        assert all(i not in before for i in d.daughter_ids)
    times = [d.time_s for d in culture.divisions]
    assert times == sorted(times)


def test_same_seed_same_culture_different_seed_different() -> None:
    a, b, c = (small_culture(seed=s) for s in (9, 9, 10))

    for culture in (a, b, c):
        culture.advance_to(HOUR)

    np.testing.assert_array_equal(a.x, b.x)
    np.testing.assert_array_equal(a.ids, b.ids)
    assert a.divisions == b.divisions
    assert len(a) != len(c) or not np.array_equal(a.x, c.x)


@pytest.mark.parametrize(
    ("dose_mj", "arrested", "dead"),
    [
        pytest.param(5.0, False, False, id="below-arrest"),
        pytest.param(25.0, True, False, id="arrest-not-death"),
        pytest.param(70.0, True, True, id="death"),
    ],
)
def test_dose_bleaches_arrests_and_kills(
    dose_mj: float, arrested: bool, dead: bool
) -> None:
    # Arrange: defaults ArrestDose 20 mJ, DeathDose 60 mJ, BleachDose 150 mJ.
    culture = small_culture(seed=4)
    idx, _, _ = culture.in_field(500.0, 500.0, 200.0, 200.0)
    outside = np.setdiff1d(np.arange(len(culture)), idx)

    # Act
    hit = culture.illuminate(500.0, 500.0, 200.0, 200.0, dose_mj)

    # Assert
    c = culture.cells
    assert hit == idx.size > 0
    np.testing.assert_allclose(c["fluor"][idx], math.exp(-dose_mj / 150.0))
    np.testing.assert_allclose(c["fluor"][outside], 1.0)
    assert np.all(c["dose_mj"][outside] == 0)
    assert np.all(c["arrested"][idx] == arrested)
    phases = culture.phases()
    assert np.all((phases[idx] == Phase.DEAD) == dead)
    assert not np.any(phases[outside] == Phase.DEAD)


def test_arrested_interphase_cells_stop_cycling() -> None:
    # Arrange: 30 mJ is past ArrestDose (20) and below DeathDose (60).
    culture = small_culture(seed=6)
    culture.illuminate(500.0, 500.0, 300.0, 300.0, 30.0)
    arrested = np.flatnonzero(
        culture.cells["arrested"] & (culture.phases() == Phase.INTERPHASE)
    )
    arrested_ids = culture.ids[arrested]
    ages = dict(
        zip(arrested_ids.tolist(), culture.cells["age_s"][arrested], strict=True)
    )

    # Act
    culture.advance_to(3 * HOUR)

    # Assert: none of them divided or aged, while the rest of the slide did.
    assert arrested_ids.size > 0
    still = np.isin(culture.ids, arrested_ids)
    assert still.sum() == arrested_ids.size
    for i in np.flatnonzero(still):
        assert culture.cells["age_s"][i] == ages[int(culture.ids[i])]
    assert culture.divisions


def test_dead_cells_only_drift_with_the_sample() -> None:
    # Arrange: kill a field of cells in a motile culture.
    culture = small_culture(
        seed=7, motility_um_per_min=2.0, drift_x_um_per_h=4.0, drift_y_um_per_h=-2.0
    )
    culture.illuminate(500.0, 500.0, 300.0, 300.0, 70.0)
    dead = np.flatnonzero(culture.phases() == Phase.DEAD)
    dead_ids = culture.ids[dead]
    x0, y0 = culture.x[dead].copy(), culture.y[dead].copy()

    # Act
    culture.advance_to(2 * HOUR)

    # Assert: they are still there, dead, displaced by the drift alone.
    where = np.flatnonzero(np.isin(culture.ids, dead_ids))
    assert where.size == dead_ids.size > 0
    order = np.argsort(culture.ids[where])
    where = where[order]
    sort0 = np.argsort(dead_ids)
    assert np.all(culture.phases()[where] == Phase.DEAD)
    np.testing.assert_allclose((culture.x[where] - x0[sort0]) % 1000, 8.0, atol=1e-6)
    np.testing.assert_allclose(
        (culture.y[where] - y0[sort0]) % 1000, 1000 - 4.0, atol=1e-6
    )


def test_in_field_wraps_around_the_slide() -> None:
    culture = small_culture(seed=1)
    culture.cells["x"][:2] = [5.0, 995.0]
    culture.cells["y"][:2] = [500.0, 500.0]

    idx, dx, _ = culture.in_field(0.0, 500.0, 40.0, 40.0)

    found = dict(zip(idx.tolist(), dx.tolist(), strict=True))
    assert found[0] == pytest.approx(5.0)
    assert found[1] == pytest.approx(-5.0)


def test_view_puts_a_nucleus_at_its_pixel() -> None:
    # Arrange: one nucleus 10 um right of and 5 um below the field centre.
    culture = Culture(
        CultureParams(
            slide_width_um=500,
            slide_height_um=500,
            density_per_mm2=0,
            seed=0,
        )
    )
    extra = culture._new_cells(1)
    extra["x"][:] = 260.0
    extra["y"][:] = 255.0
    extra["age_s"][:] = HOUR
    culture.cells = {k: np.concatenate([v, extra[k]]) for k, v in culture.cells.items()}

    view = culture.view(250.0, 250.0, (100, 200), 0.5)

    assert len(view) == 1
    assert view.x_px[0] == pytest.approx(10.0 / 0.5 + 200 / 2 - 0.5)
    assert view.y_px[0] == pytest.approx(5.0 / 0.5 + 100 / 2 - 0.5)
    assert view.phase[0] == Phase.INTERPHASE
    assert 5 / 0.5 < 2 * view.a_px[0] < 25 / 0.5
