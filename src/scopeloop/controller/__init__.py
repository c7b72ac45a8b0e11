"""The controller: owns the microscope and the run folder.

It never imports the worker or the models (no torch here), so a microscope PC
can run it without the model stack.
"""

from ._events import EventSource, Site
from ._intake import ResultIntake
from ._ledger import FRAME_COLUMNS, FrameLedger
from ._session import RunStatus, RunSummary, run_session

__all__ = [
    "FRAME_COLUMNS",
    "EventSource",
    "FrameLedger",
    "ResultIntake",
    "RunStatus",
    "RunSummary",
    "Site",
    "run_session",
]
