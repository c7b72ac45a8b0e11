"""The event source: decides, while the run goes, what the microscope does next.

Each position keeps its own schedule (next visit due, visits made), and the
`Policy` says what each position's next visit looks like (interval, power),
so one position can be imaged fast without touching the others. Every frame's
light is granted by the `LightBudget` when its event is made (power reduced
or the frame refused when a cap says so); the event carries the grant, which
the engine redeems.

With the base plan (a policy that never adapts) visits are laid out on the
plan's grid: every position every `interval_s`; a `duration_s` plan ends with
the last visit due within `duration_s`; with `interval_s` 0 (as fast as
possible) nothing is ever due later, so there `duration_s` is wall-clock time
since the iteration began. With an adaptive policy the next visit is decided
only when it is due (the source waits, and wakes early when the policy
changes), and the run lasts `duration_s` of wall-clock time.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import useq

from ._budget import GRANT_KEY, Grant, LightBudget
from ._policy import BasePolicy, Decision, Policy, Visit

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from scopeloop.config import SessionPlan

__all__ = ["EventSource", "Site"]


@dataclass(frozen=True, slots=True)
class Site:
    """A stage position as the controller uses it (coordinates resolved)."""

    name: str
    x_um: float | None
    y_um: float | None
    z_um: float | None


class EventSource:
    """An iterable of `useq.MDAEvent` that pymmcore-plus's runner pulls from.

    Events are made one visit at a time, when the runner asks, never expanded
    up front. `stop()` ends the iteration at the next event; `wake()` makes a
    waiting adaptive source look at its policy again.
    """

    def __init__(
        self,
        plan: SessionPlan,
        sites: list[Site],
        *,
        policy: Policy | None = None,
        budget: LightBudget | None = None,
        on_decision: Callable[[Decision], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not sites:
            raise ValueError("an event source needs at least one site")
        self.plan = plan
        self.sites = sites
        self.policy: Policy = policy or BasePolicy(plan)
        self.budget = budget or LightBudget(plan.budget, len(sites))
        self.visits = [0] * len(sites)
        self.next_due_s = [0.0] * len(sites)
        self.exhausted: set[int] = set()
        self._on_decision = on_decision
        self._clock = clock
        self._t0: float | None = None
        self._stop = threading.Event()
        self._wake = threading.Condition()
        ill = plan.illumination
        self._laser = (ill.laser_device, ill.laser_property)
        self._channel = (
            useq.EventChannel(config=ill.channel, group=ill.channel_group)
            if ill.channel and ill.channel_group
            else None
        )

    def stop(self) -> None:
        """End the iteration before the next event."""
        self._stop.set()
        self.wake()

    def wake(self) -> None:
        """Have a waiting source decide again now (the policy changed)."""
        with self._wake:
            self._wake.notify_all()

    def now_s(self) -> float:
        """Seconds since the iteration began (0 before)."""
        return 0.0 if self._t0 is None else self._clock() - self._t0

    def _decide(self, decision: Decision) -> None:
        if self._on_decision is not None:
            self._on_decision(decision)

    def _next_site(self) -> int | None:
        """The site whose next visit is due first, or None when the plan is done."""
        time_plan = self.plan.time
        best: int | None = None
        for p in range(len(self.sites)):
            if p in self.exhausted:
                continue
            if time_plan.frames is not None and self.visits[p] >= time_plan.frames:
                continue
            due = self.next_due_s[p]
            if time_plan.duration_s is not None and due > time_plan.duration_s:
                continue
            # Equal due times (e.g. interval 0) go to the least visited site.
            if best is None or (due, self.visits[p]) < (
                self.next_due_s[best],
                self.visits[best],
            ):
                best = p
        return best

    def _grant(self, p: int, visit: Visit, exposure_ms: float) -> Grant | None:
        grant = self.budget.request(p, visit.power_mw, exposure_ms)
        if isinstance(grant, str):
            self.exhausted.add(p)
            self._decide(
                Decision(
                    self.now_s(), p, "refused", grant + "; position no longer imaged"
                )
            )
            return None
        if grant.reduced:
            self._decide(
                Decision(
                    self.now_s(),
                    p,
                    "reduced",
                    f"{grant.asked_mw:g} mW asked, {grant.power_mw:.4g} mW granted: "
                    f"{grant.reason}",
                )
            )
        return grant

    def _visit(
        self, p: int, visit: Visit, start_s: float | None
    ) -> list[useq.MDAEvent]:
        """The events of one visit, each with its light granted (maybe none)."""
        site = self.sites[p]
        offsets = self.plan.z.offsets_um() if site.z_um is not None else [0.0]
        exposure = self.plan.illumination.exposure_ms
        events = []
        for z, dz in enumerate(offsets):
            grant = self._grant(p, visit, exposure)
            if grant is None:
                break
            events.append(
                useq.MDAEvent(
                    index={"t": self.visits[p], "p": p, "z": z},
                    min_start_time=start_s,
                    x_pos=site.x_um,
                    y_pos=site.y_um,
                    z_pos=None if site.z_um is None else site.z_um + dz,
                    pos_name=site.name,
                    exposure=exposure,
                    channel=self._channel,
                    properties=[useq.PropertyTuple(*self._laser, grant.power_mw)],
                    metadata={GRANT_KEY: grant.id, "mode": visit.mode.value},
                )
            )
        return events

    def __iter__(self) -> Iterator[useq.MDAEvent]:
        self._t0 = self._clock()
        if self.policy.adaptive:
            yield from self._adaptive()
            return
        time_plan = self.plan.time
        deadline = (
            time.monotonic() + time_plan.duration_s
            if time_plan.duration_s is not None and time_plan.interval_s == 0
            else None
        )
        while not self._stop.is_set():
            if deadline is not None and time.monotonic() > deadline:
                return
            p = self._next_site()
            if p is None:
                return
            visit = self.policy.visit(p)
            for event in self._visit(p, visit, self.next_due_s[p]):
                if self._stop.is_set():
                    return
                yield event
            self.visits[p] += 1
            self.next_due_s[p] += visit.interval_s

    def _adaptive(self) -> Iterator[useq.MDAEvent]:
        """Visits decided when due, for `duration_s` of wall-clock time."""
        end_s = self.plan.time.duration_s or 0.0
        last: list[float | None] = [None] * len(self.sites)
        while not self._stop.is_set():
            now = self.now_s()
            if now >= end_s:
                return
            for decision in self.policy.tick(now):
                self._decide(decision)
            best: tuple[float, int, int] | None = None
            for p, previous in enumerate(last):
                if p in self.exhausted:
                    continue
                due = (
                    0.0
                    if previous is None
                    else previous + self.policy.visit(p).interval_s
                )
                if best is None or (due, self.visits[p]) < best[:2]:
                    best = (due, self.visits[p], p)
            if best is None:
                return
            due, _, p = best
            if due > now:
                with self._wake:
                    self._wake.wait(min(due - now, end_s - now, 0.5))
                continue
            visit = self.policy.visit(p)
            # Keep the cadence, but after a late start or a change of mode
            # count from now rather than making up for lost visits.
            last[p] = due if now - due <= visit.interval_s / 2 else now
            self.next_due_s[p] = last[p] + visit.interval_s  # type: ignore[operator]
            for event in self._visit(p, visit, None):
                if self._stop.is_set():
                    return
                yield event
            self.visits[p] += 1
