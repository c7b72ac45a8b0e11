"""Adaptation policies: what to acquire next, per position, from the results.

A policy is a small object behind the `Policy` protocol, testable without a
microscope: it is told each result (`observe`) and the time (`tick`), and
answers what the next visit of a position looks like (`visit`: interval,
laser power, mode). Every change it makes comes back as a `Decision`, with
its reason and what triggered it, for `decisions.jsonl`. It never grants
light: the `LightBudget` does, after the policy has asked.

Times are seconds since the run started, on the controller's clock.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from scopeloop.config import EventDrivenSettings, SessionPlan
    from scopeloop.protocol import ResultMessage

__all__ = [
    "BasePolicy",
    "Decision",
    "EventDrivenPolicy",
    "Mode",
    "Policy",
    "Visit",
    "make_policy",
]


class Mode(StrEnum):
    """How a position is being imaged."""

    SLOW = "slow"
    FAST = "fast"


@dataclass(frozen=True, slots=True)
class Visit:
    """What the next visit of a position looks like."""

    interval_s: float
    """Time from the previous visit of this position."""
    power_mw: float
    mode: Mode = Mode.SLOW


@dataclass(frozen=True, slots=True)
class Decision:
    """A change the loop made, and why."""

    time_s: float
    position: int | None
    action: str
    reason: str
    mode: str | None = None
    trigger: dict[str, Any] | None = None
    latency_ms: float | None = None
    """From the triggering frame's exposure to the decision."""


@runtime_checkable
class Policy(Protocol):
    """Decides, per position, what to acquire next.

    `adaptive` says whether the schedule can change during the run (if not,
    the event source may lay out visits ahead of time).
    """

    adaptive: bool

    def observe(
        self, result: ResultMessage, frame_time_s: float | None, now_s: float
    ) -> list[Decision]:
        """Take in a result of the frame acquired at `frame_time_s`."""
        ...

    def tick(self, now_s: float) -> list[Decision]:
        """Let time pass (timeouts, holds)."""
        ...

    def visit(self, position: int) -> Visit:
        """The next visit of `position`."""
        ...


class BasePolicy:
    """The base plan, as written: every position at the plan's interval and power."""

    adaptive = False

    def __init__(self, plan: SessionPlan) -> None:
        mode = Mode(plan.policy.mode) if plan.policy.kind == "base" else Mode.SLOW
        self._visit = Visit(
            plan.time.interval_s, plan.illumination.laser_power_mw, mode
        )

    def observe(
        self, result: ResultMessage, frame_time_s: float | None, now_s: float
    ) -> list[Decision]:
        """Results change nothing."""
        return []

    def tick(self, now_s: float) -> list[Decision]:
        """Time changes nothing."""
        return []

    def visit(self, position: int) -> Visit:
        """Always the base plan."""
        return self._visit


@dataclass
class _Position:
    mode: Mode = Mode.SLOW
    streak: int = 0
    fast_since_s: float = 0.0
    hold_until_s: float | None = None
    held_for_division: bool = False
    divisions: int = 0
    modes: list[tuple[float, str]] = field(default_factory=list)


class EventDrivenPolicy:
    """Slow everywhere; fast at a position while a nucleus there is in mitosis.

    See `scopeloop.config.EventDrivenSettings` for the rules. Thread-safe:
    results arrive on the stream's thread, ticks and visits on the runner's.
    """

    adaptive = True

    def __init__(
        self, plan: SessionPlan, settings: EventDrivenSettings, positions: int
    ) -> None:
        self.settings = settings
        self._slow = Visit(plan.time.interval_s, plan.illumination.laser_power_mw)
        self._fast = Visit(
            settings.fast_interval_s,
            settings.fast_power_mw
            if settings.fast_power_mw is not None
            else plan.illumination.laser_power_mw,
            Mode.FAST,
        )
        self._confirm = Visit(settings.fast_interval_s, self._slow.power_mw)
        self.positions = [_Position() for _ in range(positions)]
        for state in self.positions:
            state.modes.append((0.0, Mode.SLOW.value))
        self.last_result_s = 0.0
        self.fallen_back = False
        self._lock = threading.Lock()

    def visit(self, position: int) -> Visit:
        """Fast or slow, as the position's mode says.

        A slow position whose last score reached the entry score, but on too
        few frames in a row, is looked at again after the fast interval (at
        the slow power): a confirmation should not wait a whole slow interval.
        """
        with self._lock:
            state = self.positions[position]
            fast = state.mode is Mode.FAST
            confirming = not fast and state.streak > 0
        if fast:
            return self._fast
        return self._confirm if confirming else self._slow

    def mode(self, position: int) -> Mode:
        """The current mode of `position`."""
        with self._lock:
            return self.positions[position].mode

    def observe(
        self, result: ResultMessage, frame_time_s: float | None, now_s: float
    ) -> list[Decision]:
        """Enter, hold or leave fast imaging on a position's result."""
        s = self.settings
        out: list[Decision] = []
        with self._lock:
            self.last_result_s = max(self.last_result_s, now_s)
            if self.fallen_back:
                self.fallen_back = False
                out.append(Decision(now_s, None, "resume", "results are coming again"))
            if result.error is not None or not 0 <= result.position < len(
                self.positions
            ):
                return out
            p, state = result.position, self.positions[result.position]
            top = max(result.nuclei, key=lambda n: n.mitosis_score, default=None)
            score = top.mitosis_score if top is not None else 0.0
            latency = None if frame_time_s is None else (now_s - frame_time_s) * 1000.0
            trigger: dict[str, Any] = {
                "frame_index": result.frame_index,
                "nucleus": None if top is None else top.id,
                "score": round(score, 4),
                "y": None if top is None else round(top.y, 1),
                "x": None if top is None else round(top.x, 1),
            }
            if state.mode is Mode.SLOW:
                state.streak = state.streak + 1 if score >= s.entry_score else 0
                if state.streak >= s.confirm_frames:
                    state.mode, state.fast_since_s = Mode.FAST, now_s
                    state.hold_until_s, state.held_for_division = None, False
                    state.streak = 0
                    state.modes.append((now_s, Mode.FAST.value))
                    out.append(
                        Decision(
                            now_s,
                            p,
                            "fast",
                            f"nucleus {trigger['nucleus']} mitosis score "
                            f"{score:.2f} >= entry {s.entry_score:g}"
                            + (
                                f" on {s.confirm_frames} frames in a row"
                                if s.confirm_frames > 1
                                else ""
                            ),
                            Mode.FAST.value,
                            trigger,
                            latency,
                        )
                    )
                return out
            if result.divisions:
                state.divisions += len(result.divisions)
                if state.held_for_division:
                    return out  # the episode's division is confirmed already
                d = result.divisions[0]
                state.hold_until_s = now_s + s.hold_s
                state.held_for_division = True
                trigger = {
                    "frame_index": result.frame_index,
                    "division": {
                        "mother": d.mother_id,
                        "daughters": list(d.daughter_ids),
                        "y": round(d.y, 1),
                        "x": round(d.x, 1),
                        "score": round(d.score, 4),
                    },
                }
                out.append(
                    Decision(
                        now_s,
                        p,
                        "hold",
                        f"division seen (mother {d.mother_id}); fast for "
                        f"{s.hold_s:g} s more",
                        Mode.FAST.value,
                        trigger,
                        latency,
                    )
                )
            elif score < s.exit_score and state.hold_until_s is None:
                state.hold_until_s = now_s + s.hold_s
                out.append(
                    Decision(
                        now_s,
                        p,
                        "hold",
                        f"highest mitosis score {score:.2f} < exit "
                        f"{s.exit_score:g}; fast for {s.hold_s:g} s more",
                        Mode.FAST.value,
                        trigger,
                        latency,
                    )
                )
            return out

    def tick(self, now_s: float) -> list[Decision]:
        """End holds and over-long episodes; fall back when results stop."""
        s = self.settings
        out: list[Decision] = []
        with self._lock:
            for p, state in enumerate(self.positions):
                if state.mode is not Mode.FAST:
                    continue
                if state.hold_until_s is not None and now_s >= state.hold_until_s:
                    reason = "hold over"
                elif now_s - state.fast_since_s >= s.max_fast_s:
                    reason = f"fast for the longest episode ({s.max_fast_s:g} s)"
                else:
                    continue
                self._slow_down(state, now_s)
                out.append(Decision(now_s, p, "slow", reason, Mode.SLOW.value))
            silent = now_s - self.last_result_s
            if not self.fallen_back and silent > s.results_timeout_s:
                self.fallen_back = True
                for p, state in enumerate(self.positions):
                    if state.mode is Mode.FAST:
                        self._slow_down(state, now_s)
                        out.append(
                            Decision(now_s, p, "slow", "fallback", Mode.SLOW.value)
                        )
                out.append(
                    Decision(
                        now_s,
                        None,
                        "fallback",
                        f"no results for {silent:.1f} s (> {s.results_timeout_s:g} "
                        "s): the base plan rules until they come back",
                    )
                )
        return out

    @staticmethod
    def _slow_down(state: _Position, now_s: float) -> None:
        state.mode, state.hold_until_s, state.streak = Mode.SLOW, None, 0
        state.held_for_division = False
        state.modes.append((now_s, Mode.SLOW.value))


def make_policy(plan: SessionPlan, positions: int) -> Policy:
    """The policy the plan asks for."""
    if plan.policy.kind == "event-driven":
        return EventDrivenPolicy(plan, plan.policy, positions)
    return BasePolicy(plan)
