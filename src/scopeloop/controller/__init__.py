"""The controller: owns the microscope and the run folder.

It never imports the worker or the models (no torch here), so a microscope PC
can run it without the model stack.
"""

from ._budget import GRANT_KEY, BudgetedEngine, Grant, LightBudget
from ._decisions import DecisionLog
from ._events import EventSource, Site
from ._intake import ResultIntake
from ._ledger import FRAME_COLUMNS, FrameLedger
from ._policy import BasePolicy, Decision, EventDrivenPolicy, Mode, Policy, Visit
from ._session import PositionStatus, RunStatus, RunSummary, run_session

__all__ = [
    "FRAME_COLUMNS",
    "GRANT_KEY",
    "BasePolicy",
    "BudgetedEngine",
    "Decision",
    "DecisionLog",
    "EventDrivenPolicy",
    "EventSource",
    "FrameLedger",
    "Grant",
    "LightBudget",
    "Mode",
    "Policy",
    "PositionStatus",
    "ResultIntake",
    "RunStatus",
    "RunSummary",
    "Site",
    "Visit",
    "run_session",
]
