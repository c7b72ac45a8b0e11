"""`scopeloop run` end to end, through the command line."""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING

import pytest
from run_files import raw_files, read_table
from typer.testing import CliRunner

from scopeloop.cli import app

if TYPE_CHECKING:
    from pathlib import Path

    from typer.testing import Result

SMALL_PLAN = """\
version: 1
name: cli-test
positions:
  - {name: a, x_um: 0, y_um: 0}
  - {name: b, x_um: 400, y_um: 0}
illumination: {exposure_ms: 20, laser_power_mw: 4}
time: {interval_s: 0.05, frames: 3}
properties:
  - {device: SimHub, property: SpeedUp, value: 600}
"""


def run(*args: str) -> Result:
    return CliRunner().invoke(app, ["run", *args])


def flat(text: str) -> str:
    """Output without rich's table borders and line wrapping."""
    return " ".join(re.sub("[\u2500-\u257f]", " ", text).split())


def write_plan(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "plan.yaml"
    path.write_text(text)
    return path


def test_run_acquires_the_plan_and_prints_the_summary(tmp_path: Path) -> None:
    plan = write_plan(tmp_path, SMALL_PLAN)
    out = tmp_path / "run"

    result = run("--plan", str(plan), "--out", str(out), "--worker", "none")

    assert result.exit_code == 0, result.output
    output = flat(result.output)
    assert "run completed" in output
    assert re.search(r"frames 6 at [\d.]+/s", output)
    assert "dose delivered 0.480 mJ" in output  # 6 x 4 mW x 20 ms
    assert "not streamed: 6" in output
    _, rows = read_table(out / "frames.csv")
    assert len(rows) == 6
    assert len(raw_files(out)) == 1
    record = json.loads((out / "run.json").read_text())
    assert record["plan_file"] == str(plan)
    assert record["finish"]["reason"] == "completed"


@pytest.mark.parametrize(
    ("text", "words"),
    [
        pytest.param(
            SMALL_PLAN.replace("frames: 3", "frames: 0"),
            "time.frames = 0",
            id="frames-0",
        ),
        pytest.param(
            SMALL_PLAN + "colour: blue\n", "colour = 'blue'", id="unknown-field"
        ),
        pytest.param(
            SMALL_PLAN.replace("laser_power_mw: 4", "laser_power_mw: 150"),
            "illumination.laser_power_mw = 150.0",
            id="power-above-the-rigs-max",
        ),
    ],
)
def test_bad_plan_exits_2_naming_the_field(
    tmp_path: Path, text: str, words: str
) -> None:
    plan = write_plan(tmp_path, text)
    out = tmp_path / "run"

    result = run("--plan", str(plan), "--out", str(out), "--worker", "none")

    assert result.exit_code == 2, result.output
    assert words in flat(result.output)
    assert not out.exists()


def test_missing_config_exits_2_naming_the_file(tmp_path: Path) -> None:
    plan = write_plan(tmp_path, SMALL_PLAN)
    missing = tmp_path / "missing.cfg"

    result = run(
        "--config",
        str(missing),
        "--plan",
        str(plan),
        "--out",
        str(tmp_path / "run"),
        "--worker",
        "none",
    )

    assert result.exit_code == 2
    assert "missing.cfg" in "".join(result.output.split())
    assert not (tmp_path / "run").exists()


def test_missing_plan_exits_2_naming_the_file(tmp_path: Path) -> None:
    result = run("--plan", str(tmp_path / "absent.yaml"), "--worker", "none")

    assert result.exit_code == 2
    assert "absent.yaml" in "".join(result.output.split())


def test_run_writes_ground_truth_a_report_and_its_score(tmp_path: Path) -> None:
    plan = write_plan(tmp_path, SMALL_PLAN)
    out = tmp_path / "run"

    result = run("--plan", str(plan), "--out", str(out), "--worker", "none")

    assert result.exit_code == 0, result.output
    output = flat(result.output)
    assert f"report: {out / 'report.png'}" in output
    assert (out / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "ground_truth" / "divisions.csv").is_file()
    assert "evaluation of" in output and "dose total (mJ) 0.48" in output
    again = CliRunner().invoke(app, ["evaluate", str(out)])
    assert again.exit_code == 0, again.output
    assert (out / "evaluation.json").is_file()


def test_evaluate_refuses_a_folder_without_ground_truth(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["evaluate", str(tmp_path)])
    assert result.exit_code == 2
    assert str(tmp_path) in flat(result.output)
