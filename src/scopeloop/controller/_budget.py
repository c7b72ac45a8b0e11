"""The light budget: the one place where light is granted.

Every exposure of a controller run is granted here before it is acquired:
the event source asks for each frame's laser power and exposure, and gets a
`Grant` (possibly with the power reduced to fit a cap) or a refusal. The dose
of a grant (power x exposure) is booked at once, so frames in flight can never
add up past a cap. The MDA engine (`BudgetedEngine`) redeems each event's
grant before it touches the hardware and refuses any event without one, so no
code path reaches the laser around the budget.
"""

from __future__ import annotations

import itertools
import math
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pymmcore_plus.mda import MDAEngine

from scopeloop.errors import LimitError

if TYPE_CHECKING:
    import useq
    from pymmcore_plus import CMMCorePlus

    from scopeloop.config import BudgetSettings

__all__ = ["GRANT_KEY", "BudgetedEngine", "Grant", "LightBudget"]

GRANT_KEY = "scopeloop_grant"
"""Key of an MDA event's metadata that holds the id of its grant."""


@dataclass(frozen=True, slots=True)
class Grant:
    """Light granted for one frame."""

    id: int
    position: int
    power_mw: float
    exposure_ms: float
    asked_mw: float
    reason: str = ""
    """Why the power was reduced ('' when granted as asked)."""

    @property
    def dose_mj(self) -> float:
        """Dose this frame delivers: mW x s."""
        return self.power_mw * self.exposure_ms / 1000.0

    @property
    def reduced(self) -> bool:
        """Whether less power was granted than asked."""
        return self.power_mw < self.asked_mw


class LightBudget:
    """Caps on laser power and dose (per position and per run). Thread-safe."""

    def __init__(self, settings: BudgetSettings, positions: int) -> None:
        self.settings = settings
        self.dose_mj = [0.0] * positions
        self.refusals = 0
        self.reductions = 0
        self._open: dict[int, Grant] = {}
        self._ids = itertools.count(1)
        self._lock = threading.Lock()

    @property
    def total_mj(self) -> float:
        """Dose granted over the whole run."""
        return math.fsum(self.dose_mj)

    def remaining_mj(self, position: int) -> float:
        """Dose that `position` may still receive (inf when uncapped)."""
        s = self.settings
        left = math.inf
        if s.max_dose_per_position_mj is not None:
            left = s.max_dose_per_position_mj - self.dose_mj[position]
        if s.max_dose_total_mj is not None:
            left = min(left, s.max_dose_total_mj - self.total_mj)
        return max(left, 0.0)

    def request(
        self, position: int, power_mw: float, exposure_ms: float
    ) -> Grant | str:
        """Grant light for one frame, or say why not.

        The power is cut to `max_power_mw`, then to what the dose caps leave;
        a frame that would need less than `min_power_fraction` of the power
        asked is refused. Zero power is always granted.
        """
        if not (math.isfinite(power_mw) and power_mw >= 0):
            raise LimitError(f"laser power must be a number >= 0 mW, got {power_mw!r}")
        if not (math.isfinite(exposure_ms) and exposure_ms >= 0):
            raise LimitError(f"exposure must be a number >= 0 ms, got {exposure_ms!r}")
        s = self.settings
        with self._lock:
            power = min(power_mw, s.max_power_mw)
            reason = f"power cap {s.max_power_mw:g} mW" if power < power_mw else ""
            if exposure_ms > 0 and power > 0:
                fits = self.remaining_mj(position) * 1000.0 / exposure_ms
                if fits < power:
                    if fits < s.min_power_fraction * power_mw:
                        self.refusals += 1
                        return (
                            f"dose cap: {self.remaining_mj(position):.3g} mJ left at "
                            f"position {position}, a frame at {power_mw:g} mW x "
                            f"{exposure_ms:g} ms needs "
                            f"{power_mw * exposure_ms / 1000:.3g} mJ"
                        )
                    power = fits * (1 - 1e-12)
                    reason = f"dose cap ({self.remaining_mj(position):.3g} mJ left)"
            grant = Grant(
                id=next(self._ids),
                position=position,
                power_mw=power,
                exposure_ms=exposure_ms,
                asked_mw=power_mw,
                reason=reason,
            )
            if grant.reduced:
                self.reductions += 1
            self.dose_mj[position] += grant.dose_mj
            self._open[grant.id] = grant
            return grant

    def redeem(self, grant_id: Any, power_mw: float, exposure_ms: float) -> Grant:
        """Check that an event about to run holds a grant for what it does.

        Raises `LimitError` for an event without a grant, with a grant already
        used, or asking more power or a longer exposure than granted.
        """
        with self._lock:
            grant = (
                self._open.pop(grant_id, None) if isinstance(grant_id, int) else None
            )
        if grant is None:
            raise LimitError(
                f"refused: an event without a valid light grant ({grant_id!r}) "
                "would have reached the laser"
            )
        if power_mw > grant.power_mw * (1 + 1e-9) or exposure_ms > grant.exposure_ms:
            raise LimitError(
                f"refused: event asks {power_mw:g} mW x {exposure_ms:g} ms, its grant "
                f"allows {grant.power_mw:g} mW x {grant.exposure_ms:g} ms"
            )
        return grant


class BudgetedEngine(MDAEngine):
    """pymmcore-plus's engine, redeeming each event's light grant first.

    Hardware sequencing is off: each event is decided when the runner asks for
    it, and each is checked here.

    `laser` is (device, property) of the laser power; the event's value of it
    (and its exposure) must be within the grant named in its metadata.
    """

    def __init__(
        self, mmc: CMMCorePlus, budget: LightBudget, laser: tuple[str, str]
    ) -> None:
        super().__init__(mmc, use_hardware_sequencing=False)
        self.budget = budget
        self.laser = laser

    def setup_event(self, event: useq.MDAEvent) -> None:
        """Redeem the event's grant, then set the hardware up as usual."""
        power = next(
            (
                float(p.property_value)
                for p in event.properties or ()
                if (p.device_name, p.property_name) == self.laser
            ),
            None,
        )
        if power is None:
            raise LimitError(
                f"refused: event {dict(event.index)} does not set the laser power "
                f"({self.laser[0]}.{self.laser[1]})"
            )
        exposure = event.exposure if event.exposure is not None else math.inf
        self.budget.redeem(event.metadata.get(GRANT_KEY), power, exposure)
        super().setup_event(event)
