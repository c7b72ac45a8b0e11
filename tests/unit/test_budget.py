"""The light budget: caps on power and dose that nothing gets around."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scopeloop.config import BudgetSettings
from scopeloop.controller import Grant, LightBudget
from scopeloop.errors import LimitError


def test_power_above_the_cap_is_cut_to_the_cap() -> None:
    budget = LightBudget(BudgetSettings(max_power_mw=10), positions=1)
    grant = budget.request(0, 25.0, 100.0)
    assert isinstance(grant, Grant)
    assert grant.power_mw == 10.0
    assert grant.reduced and "power cap" in grant.reason
    assert budget.dose_mj == [pytest.approx(1.0)]  # 10 mW x 0.1 s


def test_a_dose_cap_reduces_then_refuses() -> None:
    settings = BudgetSettings(max_dose_per_position_mj=1.0, min_power_fraction=0.5)
    budget = LightBudget(settings, positions=2)
    full = budget.request(0, 5.0, 150.0)  # 0.75 mJ
    assert isinstance(full, Grant) and not full.reduced
    cut = budget.request(0, 2.0, 200.0)  # asks 0.4 mJ, 0.25 left: 1.25 mW
    assert isinstance(cut, Grant) and cut.reduced
    assert cut.power_mw == pytest.approx(1.25)
    assert "dose cap" in cut.reason
    refused = budget.request(0, 2.0, 200.0)  # nothing left
    assert isinstance(refused, str) and "dose cap" in refused
    assert budget.refusals == 1
    other = budget.request(1, 2.0, 200.0)  # the other position has its own cap
    assert isinstance(other, Grant) and not other.reduced


def test_the_run_cap_holds_across_positions() -> None:
    budget = LightBudget(BudgetSettings(max_dose_total_mj=1.0), positions=3)
    for p in range(3):
        budget.request(p, 4.0, 100.0)  # 0.4 mJ asked each
    assert budget.total_mj <= 1.0 + 1e-9


def test_an_event_must_hold_a_grant_for_what_it_does() -> None:
    budget = LightBudget(BudgetSettings(max_power_mw=10), positions=1)
    grant = budget.request(0, 5.0, 50.0)
    assert isinstance(grant, Grant)
    with pytest.raises(LimitError, match="without a valid light grant"):
        budget.redeem(None, 5.0, 50.0)
    with pytest.raises(LimitError, match="asks 6 mW"):
        budget.redeem(grant.id, 6.0, 50.0)
    again = budget.request(0, 5.0, 50.0)
    assert isinstance(again, Grant)
    assert budget.redeem(again.id, 5.0, 50.0) == again
    with pytest.raises(LimitError, match="without a valid light grant"):
        budget.redeem(again.id, 5.0, 50.0)  # a grant is used once


@pytest.mark.parametrize("power", [math.nan, -1.0, math.inf])
def test_nonsense_power_is_an_error(power: float) -> None:
    budget = LightBudget(BudgetSettings(), positions=1)
    with pytest.raises(LimitError, match="laser power"):
        budget.request(0, power, 10.0)


@settings(max_examples=200, deadline=None)
@given(
    cap_power=st.floats(0.1, 100),
    cap_position=st.one_of(st.none(), st.floats(0.01, 10)),
    cap_total=st.one_of(st.none(), st.floats(0.01, 20)),
    asks=st.lists(
        st.tuples(st.integers(0, 2), st.floats(0, 1000), st.floats(0, 5000)),
        max_size=60,
    ),
)
def test_no_stream_of_requests_passes_a_cap(
    cap_power: float,
    cap_position: float | None,
    cap_total: float | None,
    asks: list[tuple[int, float, float]],
) -> None:
    settings = BudgetSettings(
        max_power_mw=cap_power,
        max_dose_per_position_mj=cap_position,
        max_dose_total_mj=cap_total,
    )
    budget = LightBudget(settings, positions=3)
    granted = [0.0, 0.0, 0.0]
    for position, power, exposure in asks:
        grant = budget.request(position, power, exposure)
        if isinstance(grant, Grant):
            assert grant.power_mw <= cap_power
            assert grant.power_mw <= power
            granted[position] += grant.dose_mj
    for dose in granted:
        assert cap_position is None or dose <= cap_position * (1 + 1e-9)
    assert cap_total is None or sum(granted) <= cap_total * (1 + 1e-9)
