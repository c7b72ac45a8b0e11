"""The event source: decides, while the run goes, what the microscope does next.

Each position keeps its own schedule (next visit due, visits made), so a policy
can later speed up one position without touching the others. The base plan
visits every position every `interval_s`. A `duration_s` plan ends with the
last visit due within `duration_s`; with `interval_s` 0 (as fast as possible)
nothing is ever due later, so there `duration_s` is wall-clock time since the
iteration began.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import useq

if TYPE_CHECKING:
    from collections.abc import Iterator

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
    up front. `stop()` ends the iteration at the next event.
    """

    def __init__(self, plan: SessionPlan, sites: list[Site]) -> None:
        if not sites:
            raise ValueError("an event source needs at least one site")
        self.plan = plan
        self.sites = sites
        self.visits = [0] * len(sites)
        self.next_due_s = [0.0] * len(sites)
        self._stop = threading.Event()
        ill = plan.illumination
        self._properties = [
            useq.PropertyTuple(ill.laser_device, ill.laser_property, ill.laser_power_mw)
        ]
        self._channel = (
            useq.EventChannel(config=ill.channel, group=ill.channel_group)
            if ill.channel and ill.channel_group
            else None
        )

    def stop(self) -> None:
        """End the iteration before the next event."""
        self._stop.set()

    def _next_site(self) -> int | None:
        """The site whose next visit is due first, or None when the plan is done."""
        time_plan = self.plan.time
        best: int | None = None
        for p in range(len(self.sites)):
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

    def _visit(self, p: int) -> list[useq.MDAEvent]:
        site = self.sites[p]
        offsets = self.plan.z.offsets_um() if site.z_um is not None else [0.0]
        return [
            useq.MDAEvent(
                index={"t": self.visits[p], "p": p, "z": z},
                min_start_time=self.next_due_s[p],
                x_pos=site.x_um,
                y_pos=site.y_um,
                z_pos=None if site.z_um is None else site.z_um + dz,
                pos_name=site.name,
                exposure=self.plan.illumination.exposure_ms,
                channel=self._channel,
                properties=self._properties,
            )
            for z, dz in enumerate(offsets)
        ]

    def __iter__(self) -> Iterator[useq.MDAEvent]:
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
            for event in self._visit(p):
                if self._stop.is_set():
                    return
                yield event
            self.visits[p] += 1
            self.next_due_s[p] += self.plan.time.interval_s
