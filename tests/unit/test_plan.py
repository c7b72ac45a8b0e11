"""Session plans: the shipped examples load; bad plans name file, field and value."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from scopeloop.config import (
    GridPlan,
    PlanPosition,
    SessionPlan,
    TimePlan,
    load_plan,
    save_plan,
)
from scopeloop.errors import ConfigError

PLANS = sorted((Path(__file__).parents[2] / "src/scopeloop/plans").glob("*.yaml"))

GOOD = "time: {interval_s: 1, frames: 2}\n"
ONE_FRAME = TimePlan(interval_s=1, frames=1)


def test_the_shipped_plans_are_found() -> None:
    assert {p.name for p in PLANS} >= {
        "acquire_only.yaml",
        "demo.yaml",
        "multiposition_z.yaml",
    }


@pytest.mark.parametrize("path", PLANS, ids=[p.stem for p in PLANS])
def test_every_shipped_plan_loads(path: Path) -> None:
    plan = load_plan(path)

    assert plan.version == 1
    assert plan.name
    assert (plan.time.frames is None) != (plan.time.duration_s is None)


BAD_PLANS = [
    pytest.param(
        "time: {interval_s: 1, frames: 2}\n"
        "positions:\n  - {name: p001, x_um: 0, y_um: 0}\n  - {x_um: 400, y_um: 0}\n",
        ["unique", "p001"],
        id="given-name-taken-by-an-automatic-one",
    ),
    pytest.param(
        "time: {interval_s: -1, frames: 2}\n",
        ["time.interval_s = -1"],
        id="negative-interval",
    ),
    pytest.param(
        "time: {interval_s: 1, frames: 0}\n", ["time.frames = 0"], id="frames-0"
    ),
    pytest.param(
        "time: {interval_s: 1, frames: 5, duration_s: 30}\n",
        ["time", "frames=5", "duration_s=30"],
        id="frames-and-duration",
    ),
    pytest.param(
        "time: {interval_s: 1}\n",
        ["time", "frames", "duration_s", "neither"],
        id="neither-frames-nor-duration",
    ),
    pytest.param(
        GOOD + "illumination: {laser_power_mw: 10001}\n",
        ["illumination.laser_power_mw = 10001"],
        id="laser-power-above-10000",
    ),
    pytest.param(
        GOOD + "illumination: {exposure_ms: 0}\n",
        ["illumination.exposure_ms = 0"],
        id="exposure-0",
    ),
    pytest.param(
        GOOD + "colour: blue\n", ["colour = 'blue'"], id="unknown-top-level-field"
    ),
    pytest.param(
        "time: {interval_s: 1, frames: 2, jitter_s: 7}\n",
        ["time.jitter_s = 7"],
        id="unknown-nested-field",
    ),
    pytest.param("version: 2\n" + GOOD, ["version = 2"], id="version-2"),
    pytest.param(
        GOOD + "positions: [{x_um: 0, y_um: 0}]\ngrid: {rows: 2, spacing_um: 9}\n",
        ["positions", "grid", "2x1"],
        id="positions-and-grid",
    ),
    pytest.param(
        GOOD + "positions:\n"
        "  - {name: well, x_um: 0, y_um: 0}\n"
        "  - {name: well, x_um: 5, y_um: 0}\n",
        ["position names", "'well'"],
        id="duplicate-position-names",
    ),
    pytest.param(
        GOOD + "illumination: {channel: GFP}\n",
        ["illumination", "channel_group", "'GFP'"],
        id="channel-without-group",
    ),
    pytest.param(GOOD + "z: {planes: 0}\n", ["z.planes = 0"], id="z-planes-0"),
    pytest.param("- 1\n- 2\n", ["mapping", "[1, 2]"], id="yaml-list"),
    pytest.param(
        "time: {interval_s: 1, frames: 2\n", ["not valid YAML", "line"], id="bad-yaml"
    ),
]


@pytest.mark.parametrize(("text", "words"), BAD_PLANS)
def test_bad_plan_names_file_field_and_value(
    tmp_path: Path, text: str, words: list[str]
) -> None:
    path = tmp_path / "bad_plan.yaml"
    path.write_text(text)

    with pytest.raises(ConfigError) as info:
        load_plan(path)

    message = str(info.value)
    assert str(path) in message
    for word in words:
        assert word in message


def test_missing_plan_file_is_a_config_error_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "nowhere.yaml"

    with pytest.raises(ConfigError, match=re.escape(str(path))) as info:
        load_plan(path)

    assert "cannot read" in str(info.value)


@pytest.mark.parametrize("path", PLANS, ids=[p.stem for p in PLANS])
def test_shipped_plan_survives_save_and_load(tmp_path: Path, path: Path) -> None:
    plan = load_plan(path)
    copy = tmp_path / "copy.yaml"

    save_plan(plan, copy)

    assert load_plan(copy) == plan


def test_full_plan_survives_save_and_load(tmp_path: Path) -> None:
    plan = SessionPlan.model_validate(
        {
            "name": "every-field",
            "positions": [
                {"name": "a", "x_um": -10.5, "y_um": 3, "z_um": 1.25},
                {"x_um": 100, "y_um": -200},
            ],
            "illumination": {
                "exposure_ms": 12.5,
                "laser_power_mw": 3,
                "channel_group": "Channel",
                "channel": "GFP",
            },
            "time": {"interval_s": 0.5, "duration_s": 60},
            "z": {"planes": 3, "step_um": 0.5},
            "properties": [
                {"device": "SimHub", "property": "SpeedUp", "value": 300},
                {"device": "SimHub", "property": "Clock", "value": "Wall"},
                {"device": "Camera", "property": "Gain", "value": 1.5},
            ],
            "output": {"root": str(tmp_path / "runs"), "format": "ome-zarr"},
            "stream": {"worker": "none", "max_queue": 4, "drain_s": 0},
        }
    )
    path = tmp_path / "plan.yaml"

    save_plan(plan, path)

    assert load_plan(path) == plan


def test_grid_positions_are_centred_and_named() -> None:
    grid = GridPlan(
        rows=2, columns=3, spacing_um=100, center_x_um=50.0, center_y_um=-20.0
    )

    positions = grid.positions()

    assert [p.name for p in positions] == [
        "r00c00",
        "r00c01",
        "r00c02",
        "r01c00",
        "r01c01",
        "r01c02",
    ]
    xs = sorted({p.x_um for p in positions})
    ys = sorted({p.y_um for p in positions})
    assert xs == pytest.approx([-50.0, 50.0, 150.0])
    assert ys == pytest.approx([-70.0, 30.0])
    assert sum(xs) / len(xs) == pytest.approx(50.0)
    assert sum(ys) / len(ys) == pytest.approx(-20.0)


def test_plan_positions_come_from_the_grid_or_get_default_names() -> None:
    gridded = SessionPlan(
        grid=GridPlan(rows=1, columns=2, spacing_um=400), time=ONE_FRAME
    )
    listed = SessionPlan(
        positions=(
            PlanPosition(x_um=0, y_um=0),
            PlanPosition(name="here", x_um=1, y_um=1),
            PlanPosition(x_um=2, y_um=2),
        ),
        time=ONE_FRAME,
    )

    assert [(p.name, p.x_um, p.y_um) for p in gridded.stage_positions()] == [
        ("r00c00", -200.0, 0.0),
        ("r00c01", 200.0, 0.0),
    ]
    assert [p.name for p in listed.stage_positions()] == ["p000", "here", "p002"]
    assert SessionPlan(time=ONE_FRAME).stage_positions() == []
