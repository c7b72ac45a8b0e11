"""The event source: per-position schedules turned into MDA events, lazily."""

from __future__ import annotations

import itertools
import time
from typing import Any

import pytest
import useq

from scopeloop.config import SessionPlan
from scopeloop.controller import EventSource, Site

SITES = [
    Site("left", -400.0, 0.0, None),
    Site("centre", 0.0, 0.0, None),
    Site("right", 400.0, 50.0, None),
]


def make_plan(time_plan: dict[str, Any], **fields: Any) -> SessionPlan:
    return SessionPlan.model_validate(
        {
            "illumination": {"exposure_ms": 20, "laser_power_mw": 3.5},
            "time": time_plan,
            **fields,
        }
    )


def test_events_are_position_interleaved_in_time_order() -> None:
    plan = make_plan({"interval_s": 10, "frames": 4})

    events = list(EventSource(plan, SITES))

    assert [(e.index["t"], e.index["p"]) for e in events] == [
        (t, p) for t in range(4) for p in range(3)
    ]
    assert [e.min_start_time for e in events] == [
        t * 10.0 for t in range(4) for _ in range(3)
    ]
    assert all(e.index["z"] == 0 for e in events)
    assert [(e.pos_name, e.x_pos, e.y_pos) for e in events[:3]] == [
        (s.name, s.x_um, s.y_um) for s in SITES
    ]
    assert all(e.z_pos is None for e in events)


def test_as_fast_as_possible_still_takes_turns_between_positions() -> None:
    plan = make_plan({"interval_s": 0, "frames": 3})

    events = list(EventSource(plan, SITES))

    assert [(e.index["t"], e.index["p"]) for e in events] == [
        (t, p) for t in range(3) for p in range(3)
    ]


def test_every_event_carries_exposure_and_laser_power() -> None:
    plan = make_plan({"interval_s": 10, "frames": 4})

    events = list(EventSource(plan, SITES))

    assert len(events) == 12
    for event in events:
        assert event.exposure == 20.0
        assert event.properties == [
            useq.PropertyTuple("Laser", "PowerSetpoint_mW", 3.5)
        ]
        assert event.channel is None


def test_channel_of_the_plan_is_on_every_event() -> None:
    plan = make_plan(
        {"interval_s": 1, "frames": 2},
        illumination={"channel_group": "Channel", "channel": "GFP"},
    )

    events = list(EventSource(plan, SITES[:1]))

    assert [(e.channel.group, e.channel.config) for e in events if e.channel] == [
        ("Channel", "GFP"),
        ("Channel", "GFP"),
    ]


def test_z_plan_gives_a_stack_around_each_focus() -> None:
    plan = make_plan({"interval_s": 5, "frames": 2}, z={"planes": 3, "step_um": 1.5})
    sites = [Site("a", 0.0, 0.0, 10.0), Site("b", 100.0, 0.0, -2.0)]

    events = list(EventSource(plan, sites))

    assert len(events) == 2 * 2 * 3
    first_visit = events[:3]
    assert [e.index["z"] for e in first_visit] == [0, 1, 2]
    assert [e.z_pos for e in first_visit] == pytest.approx([8.5, 10.0, 11.5])
    assert {e.index["p"] for e in first_visit} == {0}
    assert [e.z_pos for e in events[3:6]] == pytest.approx([-3.5, -2.0, -0.5])
    assert [(e.index["t"], e.index["p"]) for e in events[::3]] == [
        (0, 0),
        (0, 1),
        (1, 0),
        (1, 1),
    ]
    assert all(e.min_start_time == 5.0 * e.index["t"] for e in events)


def test_z_plan_is_ignored_where_a_site_has_no_focus() -> None:
    plan = make_plan({"interval_s": 5, "frames": 2}, z={"planes": 3, "step_um": 1.5})

    events = list(EventSource(plan, [Site("a", 0.0, 0.0, None)]))

    assert [(e.index["t"], e.index["z"], e.z_pos) for e in events] == [
        (0, 0, None),
        (1, 0, None),
    ]


@pytest.mark.parametrize(
    ("duration_s", "visits"),
    [(25.0, 3), (30.0, 4), (0.5, 1)],
    ids=["between-visits", "on-a-visit", "shorter-than-interval"],
)
def test_duration_ends_the_iteration(duration_s: float, visits: int) -> None:
    plan = make_plan({"interval_s": 10, "duration_s": duration_s})
    source = EventSource(plan, SITES)

    events = list(source)

    assert len(events) == visits * len(SITES)
    assert max(e.min_start_time or 0.0 for e in events) == (visits - 1) * 10.0
    assert source.visits == [visits] * len(SITES)
    assert plan.time.visits == visits


def test_duration_with_zero_interval_is_wall_clock_time() -> None:
    # Nothing is ever due later at interval 0: the duration has to be the clock's.
    plan = make_plan({"interval_s": 0, "duration_s": 0.2})
    source = EventSource(plan, SITES)
    started = time.monotonic()

    events = sum(1 for _ in itertools.islice(source, 1_000_000))  # ends, or ~7 s

    assert 0 < events < 1_000_000
    assert 0.2 <= time.monotonic() - started < 5.0


def test_stop_ends_the_iteration_at_the_next_event() -> None:
    plan = make_plan({"interval_s": 10, "frames": 100})
    source = EventSource(plan, SITES)
    events = iter(source)
    taken = [next(events), next(events)]

    source.stop()

    assert list(events) == []
    assert [e.index["p"] for e in taken] == [0, 1]


def test_stop_before_iterating_gives_no_events() -> None:
    source = EventSource(make_plan({"interval_s": 1, "frames": 3}), SITES)

    source.stop()

    assert list(source) == []


def test_events_are_made_lazily() -> None:
    plan = make_plan({"interval_s": 1, "frames": 10_000_000})
    source = EventSource(plan, SITES)
    started = time.monotonic()

    first = next(iter(source))
    five = list(itertools.islice(EventSource(plan, SITES), 5))

    assert time.monotonic() - started < 1.0
    assert (first.index["t"], first.index["p"]) == (0, 0)
    assert [(e.index["t"], e.index["p"]) for e in five] == [
        (0, 0),
        (0, 1),
        (0, 2),
        (1, 0),
        (1, 1),
    ]
    assert sum(source.visits) == 0  # the first visit is not even finished


def test_an_event_source_needs_a_site() -> None:
    with pytest.raises(ValueError, match="at least one site"):
        EventSource(make_plan({"interval_s": 1, "frames": 1}), [])
