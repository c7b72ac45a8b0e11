"""A controller run on the replay rig: GOWT1 played back, analysed by a worker."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from addresses import free_address
from scopeloop.config import SessionPlan
from scopeloop.controller import run_session
from scopeloop.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "hardware_configs" / "replay.cfg"
GOWT1 = ROOT.parent / "shared" / "data" / "real" / "gowt1-01" / "images.tif"


@pytest.mark.skipif(not GOWT1.is_file(), reason=f"{GOWT1} not found")
def test_a_run_on_replayed_gowt1_gives_detections(tmp_path: Path) -> None:
    address = free_address()
    plan = SessionPlan.model_validate(
        {
            "name": "replay-e2e",
            "illumination": {"exposure_ms": 20, "laser_power_mw": 10},
            "time": {"interval_s": 0, "frames": 3},
            "properties": [
                {"device": "ReplayHub", "property": "Recording", "value": str(GOWT1)},
                {"device": "ReplayHub", "property": "Clock", "value": "Step"},
            ],
            "stream": {"worker": address, "wait_for_worker_s": 60, "drain_s": 60},
        }
    )
    worker = subprocess.Popen(
        [sys.executable, "-m", "scopeloop", "worker", "--address", address,
         "--device", "cpu", "--frames", "3", "--threads", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )  # fmt: skip
    try:
        summary = run_session(CONFIG, plan, out=tmp_path / "run")
        output, _ = worker.communicate(timeout=120)
    finally:
        worker.kill()

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
    plan = SessionPlan.model_validate(
        {
            "name": "replay-loop",
            "illumination": {"exposure_ms": 20, "laser_power_mw": 10},
            "time": {"interval_s": 1.0, "duration_s": 3.0},
            "properties": [
                {"device": "ReplayHub", "property": "Recording", "value": str(GOWT1)},
            ],
            "stream": {"worker": address, "wait_for_worker_s": 60, "drain_s": 60},
            "policy": {
                "kind": "event-driven",
                "fast_interval_s": 0.25,
                "entry_score": 0.5,
                "hold_s": 1,
            },
        }
    )
    worker = subprocess.Popen(
        [sys.executable, "-m", "scopeloop", "worker", "--address", address,
         "--device", "cpu", "--threads", "1", "--idle-exit", "5"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )  # fmt: skip
    try:
        summary = run_session(CONFIG, plan, out=tmp_path / "run")
        output, _ = worker.communicate(timeout=120)
    finally:
        worker.kill()

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
