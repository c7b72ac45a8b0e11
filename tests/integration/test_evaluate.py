"""A closed-loop run on demo.cfg with ground truth, then scored and drawn.

One short run is shared by the tests: the stand-in worker of
test_closed_loop says position 1 is in mitosis, so position 1 is imaged fast
(0.02 mJ a frame) and position 0 slowly (0.01 mJ). The culture is made busy
(short cycle, dense, small slide) and fragile (arrest at 0.1 mJ, death at
0.2 mJ) so that 3 s of wall time (1.5 simulated hours) has divisions and
light damage to count.
"""

from __future__ import annotations

import csv
import gc
import json
import shutil
from collections import Counter
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest
import tifffile
from pymmcore_plus.experimental.unicore import UniMMCore
from test_closed_loop import MitosisAt, frames_of, plan

import scopeloop.sim
from addresses import free_address
from scopeloop.config import SessionPlan
from scopeloop.controller import run_session
from scopeloop.evaluate import RunFolderError, evaluate_run
from scopeloop.hardware import default_config
from scopeloop.report import write_report

if TYPE_CHECKING:
    from pathlib import Path

SPEEDUP = 1800
ARREST_MJ = 0.1
DEATH_MJ = 0.2


def busy_plan(address: str) -> SessionPlan:
    values = plan(address).model_dump(mode="json")
    values["properties"] = [
        {"device": "SimHub", "property": name, "value": value}
        for name, value in {
            "SpeedUp": SPEEDUP,
            "SlideWidth_um": 600,
            "SlideHeight_um": 600,
            "CellCycle_h": 2,
            "Mitosis_min": 30,
            "Density_per_mm2": 3000,
            "ArrestDose_mJ": ARREST_MJ,
            "DeathDose_mJ": DEATH_MJ,
        }.items()
    ] + [
        {"device": "Camera", "property": "SensorWidth", "value": 128},
        {"device": "Camera", "property": "SensorHeight", "value": 128},
    ]
    return SessionPlan.model_validate(values)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("evaluate") / "run"
    address = free_address()
    with MitosisAt(address, position=1):
        run_session(
            default_config(),
            busy_plan(address),
            out=folder,
            on_finished=scopeloop.sim.write_run_truth,
        )
    return folder


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def culture_of(folder: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(
        (folder / "ground_truth" / "culture.json").read_text()
    )
    return data


def test_ground_truth_has_one_row_per_acquired_frame(run: Path) -> None:
    frames = frames_of(run)
    truth = read_csv(run / "ground_truth" / "frames.csv")

    assert [r["index"] for r in truth] == [r["index"] for r in frames]
    assert [(r["position"], r["frame"]) for r in truth] == [
        (r["position"], r["t"]) for r in frames
    ]
    assert [r["dose_mj"] for r in truth] == [r["dose_mj"] for r in frames]
    # Clock=Wall: simulated time runs SpeedUp times the run's wall clock.
    wall = np.array([float(r["time_s"]) for r in truth])
    sim = np.array([float(r["sim_time_s"]) for r in truth])
    assert np.all(np.diff(sim) > 0)
    slope = np.polyfit(wall, sim, 1)[0]
    assert slope == pytest.approx(SPEEDUP, rel=0.1)
    for p in (0, 1):
        labels = tifffile.imread(
            run / "ground_truth" / "labels" / f"labels_p{p:03d}.ome.tiff"
        )
        assert labels.shape == (sum(r["position"] == str(p) for r in frames), 128, 128)


def test_true_divisions_name_the_frame_that_first_shows_them(run: Path) -> None:
    frames = {r["index"]: r for r in frames_of(run)}
    truth = {r["index"]: r for r in read_csv(run / "ground_truth" / "frames.csv")}
    divisions = read_csv(run / "ground_truth" / "divisions.csv")

    assert divisions, "a busy culture divides within 1.5 simulated hours"
    for d in divisions:
        frame = frames[d["frame_index"]]
        assert (frame["position"], frame["t"]) == (d["position"], d["frame"])
        assert float(truth[d["frame_index"]]["sim_time_s"]) >= float(d["sim_time_s"])
    culture = culture_of(run)
    listed = {d["mother_id"] for d in culture["divisions"]}
    assert {int(d["mother_id"]) for d in divisions} <= listed


def test_culture_json_says_what_the_light_did_to_each_nucleus(run: Path) -> None:
    culture = culture_of(run)

    assert culture["clock"] == {"mode": "Wall", "speedup": SPEEDUP}
    assert culture["sim_end_s"] > culture["sim_start_s"]
    assert [p["name"] for p in culture["positions"]] == ["p000", "p001"]
    nuclei = culture["nuclei"]
    assert nuclei
    for n in nuclei:
        if n["divided_s"] is not None:
            continue
        assert n["arrested"] == (n["dose_mj"] >= ARREST_MJ)
        assert n["dead"] == (n["dead_s"] is not None)
        if n["dead"]:
            assert n["dose_mj"] >= DEATH_MJ
        if n["positions"] == [0]:  # slow frames only: a few 0.01 mJ
            assert not n["arrested"]
        if n["division_prevented"]:
            assert n["division_due_s"] <= culture["sim_end_s"]


def test_evaluation_agrees_with_the_run_files(run: Path) -> None:
    e = evaluate_run(run)

    frames = frames_of(run)
    for p in (0, 1):
        mine = [r for r in frames if r["position"] == str(p)]
        assert e.dose_per_position_mj[p] == pytest.approx(
            sum(float(r["dose_mj"]) for r in mine)
        )
        assert e.fast_frames_per_position[p] == sum(r["mode"] == "fast" for r in mine)
    assert e.fast_frames_per_position[0] == 0
    assert e.fast_frames_per_position[1] >= 3
    assert e.dose_total_mj == pytest.approx(sum(e.dose_per_position_mj))
    assert e.frames == len(frames)
    assert e.frames_per_mode == dict(Counter(r["mode"] for r in frames))
    assert e.stream_states == dict(Counter(r["stream"] for r in frames))
    assert e.true_divisions == len(read_csv(run / "ground_truth" / "divisions.csv"))
    assert e.detected_divisions == 0  # the stand-in reports none
    assert e.recall == 0.0
    assert e.divisions_filmed_fast <= e.true_divisions
    nuclei = culture_of(run)["nuclei"]
    assert e.nuclei_seen == len(nuclei)
    assert e.nuclei_dead == sum(n["dead"] for n in nuclei)
    assert e.decisions["fast"] == 1
    latencies = [
        json.loads(line)["latency_ms"]
        for line in (run / "decisions.jsonl").read_text().splitlines()
    ]
    assert e.latency_p50_ms == pytest.approx(latencies[0], abs=0.01)
    assert json.loads((run / "evaluation.json").read_text()) == e.to_dict()


def test_report_png_of_the_run(run: Path) -> None:
    path = write_report(run)

    assert path.read_bytes().startswith(b"\x89PNG")
    assert path.stat().st_size > 10_000


def test_a_run_without_ground_truth_cannot_be_evaluated(
    run: Path, tmp_path: Path
) -> None:
    copy = tmp_path / "copied_run"
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("ground_truth"))

    with pytest.raises(RunFolderError, match="copied_run has no ground truth"):
        evaluate_run(copy)


def test_run_truth_is_none_for_a_rig_that_is_not_simulated(tmp_path: Path) -> None:
    core = UniMMCore()  # nothing loaded: no SimHub
    try:
        assert scopeloop.sim.write_run_truth(core, tmp_path, []) is None
    finally:
        del core
        gc.collect()
    assert not (tmp_path / "ground_truth").exists()
