"""The event-driven policy: hysteresis, holds, fallback and its decisions."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scopeloop.config import SessionPlan
from scopeloop.controller import BasePolicy, EventDrivenPolicy, Mode
from scopeloop.protocol import DivisionEvent, NucleusRecord, ResultMessage

BASE_POWER = 1.0


def make_plan(**policy: Any) -> SessionPlan:
    return SessionPlan.model_validate(
        {
            "illumination": {"laser_power_mw": BASE_POWER, "exposure_ms": 20},
            "time": {"interval_s": 60, "duration_s": 3600},
            "policy": {
                "kind": "event-driven",
                "fast_interval_s": 5,
                "entry_score": 0.7,
                "exit_score": 0.4,
                "hold_s": 30,
                "results_timeout_s": 100,
                **policy,
            },
        }
    )


def result(
    position: int,
    *scores: float,
    frame: int = 0,
    division: bool = False,
    error: str | None = None,
) -> ResultMessage:
    return ResultMessage(
        frame_index=frame,
        position=position,
        worker_id="w",
        nuclei=tuple(
            NucleusRecord(
                id=i + 1,
                y=10,
                x=10 * i,
                area_px=50,
                mean_intensity=1.0,
                mitosis_score=s,
            )
            for i, s in enumerate(scores)
        ),
        divisions=(
            (DivisionEvent(y=5, x=6, mother_id=1, daughter_ids=(7, 8), score=0.9),)
            if division
            else ()
        ),
        error=error,
    )


def policy(**settings: Any) -> EventDrivenPolicy:
    plan = make_plan(**settings)
    assert plan.policy.kind == "event-driven"
    return EventDrivenPolicy(plan, plan.policy, positions=2)


def test_a_score_at_entry_makes_that_position_fast_and_only_it() -> None:
    loop = policy()
    assert loop.observe(result(1, 0.2, 0.69), frame_time_s=1.0, now_s=1.5) == []
    (decision,) = loop.observe(
        result(1, 0.2, 0.71, frame=7), frame_time_s=2.0, now_s=2.25
    )
    assert decision.action == "fast" and decision.position == 1
    assert decision.trigger == {
        "frame_index": 7,
        "nucleus": 2,
        "score": 0.71,
        "y": 10.0,
        "x": 10.0,
    }
    assert decision.latency_ms == pytest.approx(250.0)
    assert "0.71 >= entry 0.7" in decision.reason
    assert loop.visit(1).interval_s == 5 and loop.visit(1).mode is Mode.FAST
    assert loop.visit(0).interval_s == 60 and loop.visit(0).mode is Mode.SLOW


def test_fast_goes_on_while_a_score_stays_above_exit_then_holds() -> None:
    loop = policy()
    loop.observe(result(0, 0.9), None, 0.0)
    for t in (5.0, 10.0, 15.0):  # between exit and entry: no flicker
        assert loop.observe(result(0, 0.5), None, t) == []
        assert loop.tick(t + 1) == []
        assert loop.mode(0) is Mode.FAST
    (hold,) = loop.observe(result(0, 0.3), None, 20.0)
    assert hold.action == "hold"
    assert loop.tick(49.0) == []  # hold_s = 30
    (slow,) = loop.tick(50.0)
    assert (slow.action, slow.position, slow.reason) == ("slow", 0, "hold over")
    assert loop.mode(0) is Mode.SLOW


def test_a_division_starts_the_hold_even_while_scores_are_high() -> None:
    loop = policy()
    loop.observe(result(0, 0.9), None, 0.0)
    (hold,) = loop.observe(result(0, 0.95, division=True, frame=3), None, 10.0)
    assert hold.action == "hold"
    assert hold.trigger is not None and hold.trigger["division"]["daughters"] == [7, 8]
    # Later divisions in the same episode do not stretch the hold.
    assert loop.observe(result(0, 0.9, division=True, frame=4), None, 20.0) == []
    assert loop.tick(39.0) == []
    assert [d.action for d in loop.tick(40.0)] == ["slow"]


def test_confirm_frames_needs_scores_in_a_row() -> None:
    loop = policy(confirm_frames=3)
    for now, score in enumerate([0.9, 0.9, 0.1, 0.9, 0.9]):
        assert loop.observe(result(0, score), None, float(now)) == []
    (fast,) = loop.observe(result(0, 0.8), None, 5.0)
    assert "3 frames in a row" in fast.reason


def test_a_confirming_frame_comes_after_the_fast_interval_at_slow_power() -> None:
    loop = policy(confirm_frames=2, fast_power_mw=3.0)
    loop.observe(result(0, 0.9), None, 0.0)
    confirm = loop.visit(0)
    assert (confirm.interval_s, confirm.power_mw, confirm.mode) == (
        5,
        BASE_POWER,
        Mode.SLOW,
    )
    assert loop.visit(1).interval_s == 60  # the other position is not concerned
    assert loop.observe(result(0, 0.2), None, 5.0) == []  # not confirmed
    assert loop.visit(0).interval_s == 60


def test_an_episode_never_lasts_longer_than_max_fast() -> None:
    loop = policy(max_fast_s=100)
    loop.observe(result(0, 0.9), None, 0.0)
    for t in range(10, 100, 10):
        loop.observe(result(0, 0.9), None, float(t))
        assert loop.tick(float(t)) == []
    (slow,) = loop.tick(100.0)
    assert "longest episode" in slow.reason


def test_without_results_every_position_falls_back_and_says_so() -> None:
    loop = policy()
    loop.observe(result(0, 0.9), None, 10.0)
    loop.observe(result(1, 0.9), None, 10.0)
    assert loop.tick(110.0) == []
    decisions = loop.tick(110.5)
    assert [(d.action, d.position) for d in decisions] == [
        ("slow", 0), ("slow", 1), ("fallback", None),
    ]  # fmt: skip
    assert loop.visit(0).mode is Mode.SLOW and loop.visit(1).mode is Mode.SLOW
    assert loop.tick(300.0) == []  # said once
    (resume,) = loop.observe(result(0, 0.1), None, 301.0)
    assert resume.action == "resume"


def test_error_results_change_nothing_but_show_the_worker_is_alive() -> None:
    loop = policy()
    assert loop.observe(result(0, error="bad frame"), None, 90.0) == []
    assert loop.tick(150.0) == []  # the error result counted as a sign of life
    assert loop.mode(0) is Mode.SLOW


def test_the_base_policy_never_changes() -> None:
    plan = make_plan()
    base = BasePolicy(plan)
    assert base.observe(result(0, 1.0, division=True), 0.0, 1.0) == []
    assert base.tick(1e6) == []
    assert (base.visit(0).interval_s, base.visit(0).power_mw) == (60, BASE_POWER)


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(0, 1),
            st.lists(st.floats(0, 1), max_size=4),
            st.booleans(),
            st.floats(0, 50),
        ),
        max_size=40,
    )
)
def test_no_stream_of_results_asks_more_than_the_plan_allows(
    stream: list[tuple[int, list[float], bool, float]],
) -> None:
    loop = policy(fast_power_mw=3.0)
    now = 0.0
    for position, scores, division, step in stream:
        now += step
        loop.observe(result(position, *scores, division=division), None, now)
        loop.tick(now)
        for p in (0, 1):
            visit = loop.visit(p)
            assert (visit.interval_s, visit.power_mw) in {(60, BASE_POWER), (5, 3.0)}


def test_plan_refuses_power_above_the_budget_and_hysteresis_upside_down() -> None:
    with pytest.raises(ValueError, match="fast_power_mw = 80"):
        make_plan(fast_power_mw=80)
    with pytest.raises(ValueError, match="exit_score"):
        make_plan(exit_score=0.9)


def test_a_base_plan_can_say_it_images_fast() -> None:
    plan = SessionPlan.model_validate(
        {
            "time": {"interval_s": 2, "frames": 3},
            "policy": {"kind": "base", "mode": "fast"},
        }
    )
    assert BasePolicy(plan).visit(0).mode is Mode.FAST
