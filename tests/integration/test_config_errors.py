"""Bad values and broken configurations give clear errors, and change nothing."""

from __future__ import annotations

import gc
import re
from typing import TYPE_CHECKING

import pytest

from scopeloop.errors import ConfigError, DeviceError, LimitError
from scopeloop.sim import default_config, load_core, world_of

if TYPE_CHECKING:
    from pathlib import Path

    from pymmcore_plus.experimental.unicore import UniMMCore

# Failed loads keep a core alive in their traceback: collect it here.
pytestmark = pytest.mark.usefixtures("collect_garbage")


@pytest.mark.parametrize(
    "power_mw", [100.5, 150.0, -1.0], ids=["just-above", "far-above", "negative"]
)
def test_laser_power_outside_limits_is_refused(
    demo_core: UniMMCore, power_mw: float
) -> None:
    with pytest.raises(ValueError, match=re.escape(str(power_mw))):
        demo_core.setProperty("Laser", "PowerSetpoint_mW", power_mw)

    assert float(demo_core.getProperty("Laser", "PowerSetpoint_mW")) == 2.0


def test_raising_max_power_allows_higher_setpoints(demo_core: UniMMCore) -> None:
    demo_core.setProperty("Laser", "MaxPower_mW", 500.0)
    demo_core.setProperty("Laser", "PowerSetpoint_mW", 400.0)

    assert float(demo_core.getProperty("Laser", "PowerSetpoint_mW")) == 400.0
    with pytest.raises(LimitError, match="MaxPower_mW"):
        demo_core.setProperty("Laser", "MaxPower_mW", 100.0)  # below the setpoint


@pytest.mark.parametrize(
    ("device", "prop", "value", "error", "words"),
    [
        pytest.param(
            "NoSuchDevice", "Foo", 1, RuntimeError, "NoSuchDevice", id="unknown-device"
        ),
        pytest.param(
            "Laser",
            "NoSuchProperty",
            1,
            KeyError,
            "NoSuchProperty",
            id="unknown-property",
        ),
        pytest.param("Camera", "Binning", 3, ConfigError, "Binning=3", id="binning-3"),
        pytest.param(
            "Camera", "Exposure", -1.0, ValueError, "-1.0", id="negative-exposure"
        ),
        pytest.param(
            "Camera", "QuantumEfficiency", 1.5, ValueError, "1.5", id="qe-above-1"
        ),
        pytest.param(
            "SimHub", "Clock", "Sundial", ValueError, "Sundial", id="unknown-clock"
        ),
        pytest.param(
            "SimHub", "CellCycle_h", 0.1, ValueError, "0.1", id="cycle-too-short"
        ),
        pytest.param("Shutter", "State", 2, ValueError, "2", id="shutter-state-2"),
    ],
)
def test_bad_property_values_raise_naming_them(
    demo_core: UniMMCore,
    device: str,
    prop: str,
    value: object,
    error: type[Exception],
    words: str,
) -> None:
    with pytest.raises(error, match=re.escape(words)):
        demo_core.setProperty(device, prop, value)


def test_inconsistent_culture_parameters_are_refused_when_the_world_starts(
    demo_core: UniMMCore,
) -> None:
    demo_core.setProperty("SimHub", "DeathDose_mJ", 5.0)  # below ArrestDose_mJ

    with pytest.raises(ConfigError, match="ArrestDose_mJ"):
        world_of(demo_core)


@pytest.mark.parametrize(
    "order",
    [("ArrestDose_mJ", "DeathDose_mJ"), ("DeathDose_mJ", "ArrestDose_mJ")],
    ids=["arrest-first", "death-first"],
)
def test_culture_parameters_can_be_set_in_any_order(
    demo_core: UniMMCore, order: tuple[str, str]
) -> None:
    values = {"ArrestDose_mJ": 100.0, "DeathDose_mJ": 300.0}

    for name in order:
        demo_core.setProperty("SimHub", name, values[name])

    params = world_of(demo_core).params
    assert (params.arrest_dose_mj, params.death_dose_mj) == (100.0, 300.0)


@pytest.mark.parametrize(
    ("move", "words"),
    [
        pytest.param(lambda c: c.setXYPosition(60_000.0, 0.0), "travel range", id="xy"),
        pytest.param(lambda c: c.setPosition(20_000.0), "outside", id="z"),
    ],
)
def test_stage_moves_beyond_travel_are_refused(
    demo_core: UniMMCore, move: object, words: str
) -> None:
    with pytest.raises(LimitError, match=words):
        move(demo_core)  # type: ignore[operator]

    assert demo_core.getXYPosition() == pytest.approx((0.0, 0.0))
    assert demo_core.getPosition() == 0.0


def test_culture_parameters_are_frozen_once_the_world_started(
    demo_core: UniMMCore,
) -> None:
    # Arrange: settable before the world starts...
    demo_core.setProperty("SimHub", "Seed", 7)
    demo_core.snapImage()  # ...which the first snap does.

    # Act / Assert
    with pytest.raises(ConfigError, match=r"fixed once the world has started.*Seed"):
        demo_core.setProperty("SimHub", "Seed", 8)
    assert world_of(demo_core).params.seed == 7
    assert int(demo_core.getProperty("SimHub", "Seed")) == 7


def test_time_cannot_run_backwards_or_be_set_on_a_wall_clock(
    demo_core: UniMMCore,
) -> None:
    demo_core.setProperty("SimHub", "SimTime_s", 600.0)

    with pytest.raises(ConfigError, match="backwards"):
        demo_core.setProperty("SimHub", "SimTime_s", 300.0)
    demo_core.setProperty("SimHub", "Clock", "Wall")
    with pytest.raises(ConfigError, match="Clock=Manual"):
        demo_core.setProperty("SimHub", "SimTime_s", 900.0)


# -- configuration files -------------------------------------------------------


def load_and_release(path: Path) -> None:
    core = load_core(path)
    del core
    gc.collect()


BROKEN_LINES = [
    pytest.param(
        "Property,Core,AutoShutter,0", "Property,Core,AutoShutter", id="missing-value"
    ),
    pytest.param(
        "#py Property,Camera,Gain,1", "#py Property,Camera,Gain,abc", id="non-numeric"
    ),
    pytest.param(
        "#py pyDevice,Laser,scopeloop.sim,SimLaser",
        "#py pyDevice,Laser,scopeloop.sim,NoSuchLaser",
        id="unknown-class",
    ),
    pytest.param(
        "#py Property,Laser,PowerSetpoint_mW,2",
        "#py Property,Laser,PowerSetpoint_mW,500",
        id="power-above-max",
    ),
    pytest.param(
        "ConfigGroup,LaserPower,Low,Laser,PowerSetpoint_mW,1",
        "ConfigGroup,LaserPower,Low,Laser",
        id="short-config-group",
    ),
]


@pytest.mark.parametrize(("good", "bad"), BROKEN_LINES)
def test_malformed_config_line_names_file_and_line(
    tmp_path: Path, good: str, bad: str
) -> None:
    # Arrange: a copy of demo.cfg with one line broken.
    lines = default_config().read_text().splitlines()
    number = lines.index(good) + 1
    lines[number - 1] = bad
    path = tmp_path / "broken.cfg"
    path.write_text("\n".join(lines) + "\n")

    # Act
    with pytest.raises(ConfigError) as info:
        load_and_release(path)

    # Assert: the file, the line number and the offending text are named.
    message = str(info.value)
    assert str(path) in message
    assert f"line {number}" in message
    assert bad.removeprefix("#py ") in message


def test_missing_config_file_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "nowhere.cfg"

    with pytest.raises(ConfigError, match=re.escape(str(path))):
        load_and_release(path)


def test_device_without_parent_hub_says_how_to_fix_it(tmp_path: Path) -> None:
    # Arrange: demo.cfg without the camera's Parent line.
    text = default_config().read_text().replace("#py Parent,Camera,SimHub\n", "")
    path = tmp_path / "orphan.cfg"
    path.write_text(text)
    core = load_core(path)

    # Act
    try:
        with pytest.raises(DeviceError) as info:
            core.snapImage()
    finally:
        del core
        gc.collect()

    # Assert
    assert "'Camera'" in str(info.value)
    assert "#py Parent,Camera," in str(info.value)


def test_world_of_a_core_without_a_hub_is_a_device_error(tmp_path: Path) -> None:
    path = tmp_path / "hubless.cfg"
    path.write_text(
        "#py pyDevice,Camera,scopeloop.sim,SimCamera\n"
        "Property,Core,Initialize,1\n"
        "#py Property,Core,Camera,Camera\n"
    )
    core = load_core(path)

    try:
        with pytest.raises(DeviceError, match="SimHub"):
            world_of(core)
    finally:
        del core
        gc.collect()


def test_negative_exposure_never_reaches_the_sample(demo_core: UniMMCore) -> None:
    # core.setExposure goes to the camera without the property's limits; either
    # the camera refuses it or the exposure does, before any light is counted.
    with pytest.raises(ValueError, match=r"(?i)exposure"):
        demo_core.setExposure(-1.0)
        demo_core.snapImage()

    world = world_of(demo_core)
    assert world.exposures == []
    assert world.delivered_dose_mj == 0.0


def test_set_exposure_refuses_negative_values_upfront(demo_core: UniMMCore) -> None:
    with pytest.raises(ValueError, match="-1"):
        demo_core.setExposure(-1.0)

    assert demo_core.getExposure() == 50.0
