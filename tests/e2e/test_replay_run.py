"""A controller run on the replay rig: GOWT1 played back, analysed by a worker."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest

from addresses import free_address
from scopeloop.config import SessionPlan
from scopeloop.controller import run_session
from scopeloop.errors import ConfigError
from workers import worker_process

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "hardware_configs" / "replay.cfg"
GOWT1 = ROOT.parent / "shared" / "data" / "real" / "gowt1-01" / "images.tif"
RECORDING = {"device": "ReplayHub", "property": "Recording", "value": str(GOWT1)}


def gowt1_plan(address: str, **fields: Any) -> SessionPlan:
    """A plan replaying GOWT1 (20 ms at 10 mW) to the worker at `address`."""
    return SessionPlan.model_validate(
        {
            "illumination": {"exposure_ms": 20, "laser_power_mw": 10},
            "stream": {"worker": address, "wait_for_worker_s": 60, "drain_s": 60},
            **fields,
        }
    )


@pytest.mark.skipif(not GOWT1.is_file(), reason=f"{GOWT1} not found")
def test_a_run_on_replayed_gowt1_gives_detections(tmp_path: Path) -> None:
    address = free_address()
    plan = gowt1_plan(
        address,
        name="replay-e2e",
        time={"interval_s": 0, "frames": 3},
        properties=[
            RECORDING,
            {"device": "ReplayHub", "property": "Clock", "value": "Step"},
        ],
    )
    with worker_process(address, "--frames", "3") as worker:
        summary = run_session(CONFIG, plan, out=tmp_path / "run")
        output, _ = worker.communicate(timeout=120)

    assert worker.returncode == 0, output
    assert summary.frames == 3
    with (tmp_path / "run" / "results" / "nuclei.csv").open(newline="") as f:
        nuclei = list(csv.DictReader(f))
    assert len(nuclei) >= 3
    assert {r["frame_index"] for r in nuclei} >= {"0", "1", "2"}
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    hub = record["replay"]["ReplayHub"]["properties"]
    assert hub["Recording"] == str(GOWT1)
    assert int(hub["Frames"]) == 92


def test_a_run_without_a_recording_is_refused_before_acquiring(
    tmp_path: Path,
) -> None:
    plan = SessionPlan.model_validate(
        {
            "time": {"interval_s": 0, "frames": 1},
            "stream": {"worker": "none"},
        }
    )

    with pytest.raises(ConfigError, match="set the Recording property"):
        run_session(CONFIG, plan, out=tmp_path / "run")
    assert not (tmp_path / "run").exists()


@pytest.mark.skipif(not GOWT1.is_file(), reason=f"{GOWT1} not found")
def test_the_closed_loop_runs_on_replayed_gowt1(tmp_path: Path) -> None:
    address = free_address()
    plan = gowt1_plan(
        address,
        name="replay-loop",
        time={"interval_s": 1.0, "duration_s": 3.0},
        properties=[RECORDING],
        policy={
            "kind": "event-driven",
            "fast_interval_s": 0.25,
            "entry_score": 0.5,
            "hold_s": 1,
        },
    )
    with worker_process(address, "--idle-exit", "5") as worker:
        summary = run_session(CONFIG, plan, out=tmp_path / "run")
        output, _ = worker.communicate(timeout=120)

    assert worker.returncode == 0, output
    assert summary.frames >= 3
    folder = tmp_path / "run"
    with (folder / "frames.csv").open(newline="") as f:
        frames = list(csv.DictReader(f))
    assert {r["mode"] for r in frames} <= {"slow", "fast"}
    assert {r["stream"] for r in frames} <= {"analysed", "skipped"}
    with (folder / "results" / "nuclei.csv").open(newline="") as f:
        nuclei = list(csv.DictReader(f))
    assert len(nuclei) >= summary.frames // 2  # nuclei found on the real frames
    lines = (folder / "decisions.jsonl").read_text().splitlines()
    assert all(json.loads(line)["action"] for line in lines)


@pytest.mark.skipif(not GOWT1.is_file(), reason=f"{GOWT1} not found")
def test_a_plan_position_off_the_recording_is_refused_before_the_run(
    tmp_path: Path,
) -> None:
    plan = SessionPlan.model_validate(
        {
            "positions": [{"name": "there", "x_um": 0, "y_um": 0},
                          {"name": "nowhere", "x_um": 5000, "y_um": 0}],
            "time": {"interval_s": 0, "frames": 1},
            "properties": [RECORDING],
            "stream": {"worker": "none"},
        }
    )  # fmt: skip

    with pytest.raises(ConfigError, match=r"position 'nowhere'.*out of range"):
        run_session(CONFIG, plan, out=tmp_path / "run")
    assert not (tmp_path / "run").exists()
