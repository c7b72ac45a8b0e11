"""The inference worker: receives frames, returns restored images, labels, divisions.

Run it with ``scopeloop worker --address tcp://127.0.0.1:5555``; in Python,
`Pipeline.load()` gives the pipeline with the shipped models and `serve` runs
the loop against a controller.
"""

from ._analyze import AnalysisSummary, analyze_recording
from ._local import LocalWorker, free_loopback_address
from ._pipeline import (
    DenoiseModel,
    FrameInput,
    FrameOutput,
    LabelModel,
    MitosisModel,
    Pipeline,
    check_frame,
)
from ._server import WorkerStats, serve
from ._tracker import Detection, Division, Track, Tracker, TrackerSettings

__all__ = [
    "AnalysisSummary",
    "DenoiseModel",
    "Detection",
    "Division",
    "FrameInput",
    "FrameOutput",
    "LabelModel",
    "LocalWorker",
    "MitosisModel",
    "Pipeline",
    "Track",
    "Tracker",
    "TrackerSettings",
    "WorkerStats",
    "analyze_recording",
    "check_frame",
    "free_loopback_address",
    "serve",
]
