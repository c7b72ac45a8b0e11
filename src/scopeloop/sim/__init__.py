"""The simulated microscope: a living culture behind Micro-Manager devices.

Load it like any rig::

    from pymmcore_plus.experimental.unicore import UniMMCore

    core = UniMMCore()
    core.loadSystemConfiguration("hardware_configs/demo.cfg")

`world_of(core)` gives the simulated `World` (culture, clock, exposures) for
ground truth. `hardware_configs/replay.cfg` plays a recording back as a camera
instead (`ReplayHub`, `ReplayCamera`; `replay_of(core)` gives the hub).
"""

from scopeloop.hardware import default_config, load_core

from ._culture import Culture, Division, NucleiView, Phase
from ._devices import (
    SimCamera,
    SimFocus,
    SimHub,
    SimLaser,
    SimShutter,
    SimXYStage,
    world_of,
)
from ._params import CultureParams
from ._render import render_fluorescence, render_labels
from ._replay import ReplayCamera, ReplayClock, ReplayHub, replay_of
from ._run_truth import write_run_truth
from ._sensor import SensorModel
from ._simulate import SimulationSummary, run_simulation
from ._world import ClockMode, Exposure, World

__all__ = [
    "ClockMode",
    "Culture",
    "CultureParams",
    "Division",
    "Exposure",
    "NucleiView",
    "Phase",
    "ReplayCamera",
    "ReplayClock",
    "ReplayHub",
    "SensorModel",
    "SimCamera",
    "SimFocus",
    "SimHub",
    "SimLaser",
    "SimShutter",
    "SimXYStage",
    "SimulationSummary",
    "World",
    "default_config",
    "load_core",
    "render_fluorescence",
    "render_labels",
    "replay_of",
    "run_simulation",
    "world_of",
    "write_run_truth",
]
