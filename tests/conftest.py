"""Shared fixtures: simulated cores on a manual clock and one short simulated run.

Every `UniMMCore` made here is released on the main thread with
`del core; gc.collect()`: collecting one on another thread after a sequence
acquisition can abort the process at exit.
"""

from __future__ import annotations

import gc
from typing import TYPE_CHECKING, Any

import pytest

from scopeloop.config import SimulationOptions
from scopeloop.sim import default_config, load_core, run_simulation

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path

    from pymmcore_plus.experimental.unicore import UniMMCore

    from scopeloop.sim import SimulationSummary

HUB = "SimHub"


def _manual_core(**hub_properties: Any) -> UniMMCore:
    """demo.cfg loaded, clock set to Manual, culture properties set (in order).

    Nothing here starts the world, so culture parameters are still settable.
    """
    core = load_core(default_config())
    core.setProperty(HUB, "Clock", "Manual")
    for name, value in hub_properties.items():
        core.setProperty(HUB, name, value)
    return core


@pytest.fixture
def demo_core() -> Iterator[UniMMCore]:
    """The bundled demo.cfg on a manual clock; the world has not started yet."""
    core = _manual_core()
    yield core
    del core
    gc.collect()


@pytest.fixture
def make_core() -> Iterator[Callable[..., UniMMCore]]:
    """Factory of demo.cfg cores on a manual clock with SimHub properties set.

    Keyword arguments are SimHub property names (`Seed=3`, `BleachDose_mJ=1e9`)
    set in the order given, before the world starts.
    """
    cores: list[UniMMCore] = []

    def make(**hub_properties: Any) -> UniMMCore:
        core = _manual_core(**hub_properties)
        cores.append(core)
        return core

    yield make
    cores.clear()
    gc.collect()


@pytest.fixture
def collect_garbage() -> Iterator[None]:
    """Collect, on the main thread, cores that a failed load left in a traceback."""
    yield
    gc.collect()


@pytest.fixture(autouse=True, scope="session")
def _collect_cores_on_main_thread() -> Iterator[None]:
    """Collect whatever cores a failed test left behind before the session ends."""
    yield
    gc.collect()


# -- one short simulated acquisition, shared by the ground-truth tests ---------

SHORT_RUN = {
    "frames": 8,
    "interval_s": 600.0,
    "positions": 2,
    "speedup": 1e6,
    "seed": 0,
}


@pytest.fixture(scope="session")
def short_run(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[Path, SimulationSummary]:
    """`run_simulation` of 8 frames x 2 positions (10 min apart), written to disk."""
    out = tmp_path_factory.mktemp("short_run") / "run"
    summary = run_simulation(SimulationOptions(out=out, **SHORT_RUN))
    return out, summary
