"""The simulated microscope: a living culture behind Micro-Manager devices.

Load it like any rig::

    from pymmcore_plus.experimental.unicore import UniMMCore

    core = UniMMCore()
    core.loadSystemConfiguration("hardware_configs/demo.cfg")

`world_of(core)` gives the simulated `World` (culture, clock, exposures) for
ground truth.
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
    "run_simulation",
    "world_of",
    "write_run_truth",
]
