"""Validated settings: pydantic models read from the command line and from files."""

from ._plan import (
    GridPlan,
    Illumination,
    OutputSettings,
    PlanPosition,
    PropertySetting,
    SessionPlan,
    StreamSettings,
    TimePlan,
    ZPlan,
    load_plan,
    save_plan,
)
from ._policy import (
    BasePolicySettings,
    BudgetSettings,
    EventDrivenSettings,
    PolicySettings,
)
from ._simulation import OutputFormat, SimulationOptions

__all__ = [
    "BasePolicySettings",
    "BudgetSettings",
    "EventDrivenSettings",
    "GridPlan",
    "Illumination",
    "OutputFormat",
    "OutputSettings",
    "PlanPosition",
    "PolicySettings",
    "PropertySetting",
    "SessionPlan",
    "SimulationOptions",
    "StreamSettings",
    "TimePlan",
    "ZPlan",
    "load_plan",
    "save_plan",
]
