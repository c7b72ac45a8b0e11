"""Plan settings of the adaptation policy and of the light budget.

Example (in a plan file)::

    policy:
      kind: event-driven
      entry_score: 0.7        # a nucleus this likely in mitosis starts fast imaging
      exit_score: 0.4         # fast imaging goes on while any nucleus scores this
      fast_interval_s: 20
      hold_s: 120             # after the division, or after scores fall
    budget:
      max_power_mw: 10
      max_dose_per_position_mj: 40
      max_dose_total_mj: 120
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = [
    "BasePolicySettings",
    "BudgetSettings",
    "EventDrivenSettings",
    "PolicySettings",
]


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class BudgetSettings(_Model):
    """Hard caps on light that no detection can override."""

    max_power_mw: float = Field(
        50.0, gt=0, le=10_000, description="Highest laser power any frame may use."
    )
    max_dose_per_position_mj: float | None = Field(
        None, gt=0, le=1e9, description="Dose (mW x s) one position may receive."
    )
    max_dose_total_mj: float | None = Field(
        None, gt=0, le=1e9, description="Dose the whole run may deliver."
    )
    min_power_fraction: float = Field(
        0.25,
        gt=0,
        le=1,
        description="A frame whose power would have to be cut below this "
        "fraction of what was asked to fit a dose cap is refused instead.",
    )


class BasePolicySettings(_Model):
    """No adaptation: the base plan, as written."""

    kind: Literal["base"] = "base"
    mode: Literal["slow", "fast"] = Field(
        "slow",
        description="Mode written for every frame (a plan imaging fast all the "
        "time says 'fast', so that scoring counts its frames as fast).",
    )


class EventDrivenSettings(_Model):
    """Slow and gentle everywhere; fast where a nucleus enters mitosis.

    Per position: when a nucleus's mitosis score reaches `entry_score` on
    `confirm_frames` frames in a row (the confirming frames are taken after
    `fast_interval_s`, at the slow power), the position is imaged every
    `fast_interval_s` (at `fast_power_mw` if given). It stays fast while any
    nucleus scores at least `exit_score` (hysteresis), then for `hold_s`
    more, and never longer than `max_fast_s` in one episode. A division seen
    at the position also starts the hold. When no result has come for
    `results_timeout_s`, every position falls back to the base plan.
    """

    kind: Literal["event-driven"] = "event-driven"
    entry_score: float = Field(0.7, gt=0, le=1, description="Score that starts fast.")
    exit_score: float = Field(
        0.4, ge=0, lt=1, description="Fast goes on while any score is this high."
    )
    confirm_frames: int = Field(
        1, ge=1, le=100, description="Frames in a row at entry_score to start fast."
    )
    fast_interval_s: float = Field(
        gt=0, le=86_400, description="Interval between visits while fast."
    )
    fast_power_mw: float | None = Field(
        None, ge=0, le=10_000, description="Laser power while fast (default: base)."
    )
    hold_s: float = Field(
        300.0, ge=0, le=86_400, description="Fast imaging goes on this long after."
    )
    max_fast_s: float = Field(
        3600.0, gt=0, le=7 * 86_400, description="Longest fast episode."
    )
    results_timeout_s: float = Field(
        30.0, gt=0, le=86_400, description="Silence after which the base plan rules."
    )

    @model_validator(mode="after")
    def _hysteresis(self) -> EventDrivenSettings:
        if self.exit_score > self.entry_score:
            raise ValueError(
                f"exit_score ({self.exit_score}) must not be above entry_score "
                f"({self.entry_score})"
            )
        return self


PolicySettings = Annotated[
    BasePolicySettings | EventDrivenSettings, Field(discriminator="kind")
]
