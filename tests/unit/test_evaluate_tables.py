"""Scoring a run against ground truth, on hand-made run folders.

The made-up run: two positions, simulated time = 10 x wall time. Position 0
is imaged slowly (wall 0, 10, 20 s); position 1 once slowly (wall 0.5 s), then
fast from a decision at wall 1.5 s, every 2 s (wall 2 ... 20 s). Mitosis
stages (simulated s): prophase 30, metaphase 20, anaphase 15, telophase 20.
"""

from __future__ import annotations

import csv
import json
from typing import TYPE_CHECKING, Any

import pytest
from rich.console import Console

from scopeloop.evaluate import (
    DivisionPoint,
    RunFolderError,
    SimClock,
    evaluate_run,
    format_evaluation,
    match_divisions,
)

if TYPE_CHECKING:
    from collections.abc import Sequence
    from pathlib import Path

SPEEDUP = 10.0
RUN_FRAME_COLUMNS = (
    "index", "position", "position_name", "t", "z", "time_s", "mode", "exposure_ms",
    "laser_power_mw", "dose_mj", "stream", "reason", "worker", "latency_ms",
)  # fmt: skip
TRUTH_FRAME_COLUMNS = ("index", "frame", "position", "z", "sim_time_s", "time_s")
TRUTH_DIVISION_COLUMNS = (
    "frame", "position", "y", "x", "sim_time_s", "mother_id", "daughter_ids",
    "frame_index",
)  # fmt: skip
DETECTED_COLUMNS = (
    "frame_index", "position", "y", "x", "mother_id", "daughter_ids", "score",
)  # fmt: skip


def _write(path: Path, columns: Sequence[str], rows: Sequence[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def made_up_frames() -> list[dict[str, Any]]:
    visits = [(0, 0.0, "slow"), (1, 0.5, "slow"), (0, 10.0, "slow"), (0, 20.0, "slow")]
    visits += [(1, float(w), "fast") for w in range(2, 21, 2)]
    visits.sort(key=lambda v: v[1])
    rows, t = [], {0: 0, 1: 0}
    for index, (p, wall, mode) in enumerate(visits):
        fast = mode == "fast"
        rows.append(
            {
                "index": index,
                "position": p,
                "position_name": f"p{p:03d}",
                "t": t[p],
                "z": 0,
                "time_s": wall,
                "mode": mode,
                "exposure_ms": 10.0,
                "laser_power_mw": 2.0 if fast else 1.0,
                "dose_mj": 0.02 if fast else 0.01,
                "stream": "skipped" if index in (3, 4) else "analysed",
                "reason": "",
                "worker": "w",
                "latency_ms": "",
            }
        )
        t[p] += 1
    return rows


def frame_at(rows: Sequence[dict[str, Any]], position: int, wall: float) -> int:
    return next(
        int(r["index"])
        for r in rows
        if r["position"] == position and r["time_s"] == wall
    )


def make_run(
    folder: Path,
    *,
    truth: bool = True,
    detected: Sequence[dict[str, Any]] = (),
    decisions: Sequence[dict[str, Any]] | None = None,
) -> Path:
    """A run folder with made-up tables (see the module docstring)."""
    rows = made_up_frames()
    _write(folder / "frames.csv", RUN_FRAME_COLUMNS, rows)
    (folder / "run.json").write_text(
        json.dumps({"positions": [{"name": "p000"}, {"name": "p001"}]})
    )
    _write(folder / "results" / "divisions.csv", DETECTED_COLUMNS, detected)
    if decisions is None:
        decisions = [
            {"time_s": 1.5, "position": 1, "action": "fast", "latency_ms": 10.0},
            {"time_s": 30.0, "position": 1, "action": "hold", "latency_ms": 20.0},
            {"time_s": 31.0, "position": 1, "action": "slow", "latency_ms": None},
            {"time_s": 32.0, "position": None, "action": "fallback"},
        ]
    (folder / "decisions.jsonl").write_text(
        "".join(json.dumps(d) + "\n" for d in decisions)
    )
    if not truth:
        return folder
    gt = folder / "ground_truth"
    _write(
        gt / "frames.csv",
        TRUTH_FRAME_COLUMNS,
        [
            {
                "index": r["index"],
                "frame": r["t"],
                "position": r["position"],
                "z": 0,
                "sim_time_s": SPEEDUP * r["time_s"],
                "time_s": r["time_s"],
            }
            for r in rows
        ],
    )
    # Position 1 at sim 60 s (first shown by the frame at wall 6 s, t = 3);
    # position 0 at sim 150 s (first shown at wall 20 s, t = 2).
    _write(
        gt / "divisions.csv",
        TRUTH_DIVISION_COLUMNS,
        [
            {
                "frame": 3, "position": 1, "y": 40.0, "x": 50.0, "sim_time_s": 60.0,
                "mother_id": 7, "daughter_ids": "8;9",
                "frame_index": frame_at(rows, 1, 6.0),
            },
            {
                "frame": 2, "position": 0, "y": 10.0, "x": 10.0, "sim_time_s": 150.0,
                "mother_id": 3, "daughter_ids": "10;11",
                "frame_index": frame_at(rows, 0, 20.0),
            },
        ],
    )  # fmt: skip
    nucleus = {"arrested": False, "dead": False, "division_prevented": False}
    culture = {
        "version": 1,
        "clock": {"mode": "Wall", "speedup": SPEEDUP},
        "sim_start_s": 0.0,
        "sim_end_s": 200.0,
        "params": {"nucleus_diameter_um": 10.0},
        "mitosis_stages_s": {
            "prophase": 30.0,
            "metaphase": 20.0,
            "anaphase": 15.0,
            "telophase": 20.0,
        },
        "positions": [
            {"position": 0, "pixel_um": 0.5},
            {"position": 1, "pixel_um": 0.5},
        ],
        "nuclei": [
            {**nucleus, "id": 1},
            {**nucleus, "id": 2, "arrested": True, "division_prevented": True},
            {**nucleus, "id": 4, "arrested": True, "dead": True},
        ],
        "divisions": [],
    }
    (gt / "culture.json").write_text(json.dumps(culture))
    return folder


# -- matching ---------------------------------------------------------------------

TRUE = DivisionPoint(position=1, frame=5, y=40.0, x=50.0, time_s=100.0)


@pytest.mark.parametrize(
    ("detected", "matches"),
    [
        pytest.param(DivisionPoint(1, 5, 40.0, 50.0), 1, id="same-place-same-frame"),
        pytest.param(DivisionPoint(1, 7, 45.0, 58.0), 1, id="2-frames-late-9px-off"),
        pytest.param(DivisionPoint(1, 3, 40.0, 50.0), 1, id="2-frames-early"),
        pytest.param(DivisionPoint(1, 8, 40.0, 50.0), 0, id="3-frames-late"),
        pytest.param(DivisionPoint(1, 5, 40.0, 71.0), 0, id="21px-off"),
        pytest.param(DivisionPoint(0, 5, 40.0, 50.0), 0, id="other-position"),
    ],
)
def test_a_detection_matches_within_frames_and_radius_at_the_same_position(
    detected: DivisionPoint, matches: int
) -> None:
    pairs = match_divisions([detected], [TRUE], tolerance_frames=2, radius_px=20)
    assert len(pairs) == matches


def test_each_division_is_matched_at_most_once() -> None:
    detected = [DivisionPoint(1, 5, 40, 50), DivisionPoint(1, 6, 41, 50)]
    assert match_divisions(detected, [TRUE], radius_px=20) == [(0, 0)]


def test_matching_pairs_as_many_as_possible() -> None:
    # Detection 0 could take either true division; detection 1 only the first.
    # Taking the nearest for detection 0 first would leave detection 1 alone.
    true = [DivisionPoint(1, 5, 40, 50), DivisionPoint(1, 5, 40, 65)]
    detected = [DivisionPoint(1, 5, 40, 52), DivisionPoint(1, 5, 40, 38)]
    assert match_divisions(detected, true, radius_px=15) == [(0, 1), (1, 0)]


def test_the_sim_clock_is_the_line_through_wall_and_sim_times() -> None:
    clock = SimClock.fit([1.0, 2.0, 3.0], [110.0, 210.0, 310.0])
    assert clock.sim(4.0) == pytest.approx(410.0)
    assert clock.wall(60.0) == pytest.approx(0.5)
    assert SimClock.fit([2.0], [50.0], speedup=5).sim(3.0) == pytest.approx(55.0)
    still = SimClock.fit([1.0, 2.0], [50.0, 50.0], speedup=5)
    assert (still.sim(3.0), still.wall(50.0)) == (50.0, 0.0)


# -- a whole run ------------------------------------------------------------------


def test_frames_dose_and_stream_are_counted_from_frames_csv(tmp_path: Path) -> None:
    e = evaluate_run(make_run(tmp_path / "run"))

    assert e.frames == 14
    assert e.positions == ("p000", "p001")
    assert e.frames_per_mode == {"slow": 4, "fast": 10}
    assert e.fast_frames_per_position == (0, 10)
    assert e.dose_per_position_mj == pytest.approx((0.03, 0.01 + 10 * 0.02))
    assert e.dose_total_mj == pytest.approx(0.24)
    assert e.frames_skipped == 2
    assert e.stream_states == {"analysed": 12, "skipped": 2}


def test_precision_recall_and_f1_of_detected_divisions(tmp_path: Path) -> None:
    rows = made_up_frames()
    detected = [
        # Position 1, one visit after the truth (t = 4), 5 px away: a match.
        {"frame_index": frame_at(rows, 1, 8.0), "position": 1, "y": 43, "x": 54},
        # Within 2 visits of the truth at position 0, but 127 px away.
        {"frame_index": frame_at(rows, 0, 0.0), "position": 0, "y": 100, "x": 100},
    ]
    e = evaluate_run(make_run(tmp_path / "run", detected=detected))

    assert (e.true_divisions, e.detected_divisions, e.matched_divisions) == (2, 2, 1)
    assert (e.precision, e.recall, e.f1) == (0.5, 0.5, 0.5)
    assert e.match_radius_px == 20.0  # one 10 um nucleus at 0.5 um per pixel


def test_no_detections_score_zero_recall_and_no_precision(tmp_path: Path) -> None:
    e = evaluate_run(make_run(tmp_path / "run"))

    assert (e.precision, e.recall, e.f1) == (None, 0.0, 0.0)


def test_lead_time_counts_from_the_first_fast_decision_within_the_window(
    tmp_path: Path,
) -> None:
    e = evaluate_run(make_run(tmp_path / "run"))

    # Fast decided at wall 1.5 s = sim 15 s; the division at sim 60 s at the same
    # position; position 0 never went fast.
    assert e.lead_window_s == 50.0  # prophase + metaphase
    assert e.lead_times_s == (45.0,)
    assert e.lead_time_median_s == 45.0
    narrow = evaluate_run(make_run(tmp_path / "narrow"), lead_window_s=40.0)
    assert narrow.lead_times_s == ()
    assert narrow.lead_time_median_s is None


@pytest.mark.parametrize(("min_fast_frames", "filmed"), [(2, 1), (3, 0)])
def test_a_division_is_filmed_fast_with_enough_fast_frames_around_anaphase(
    tmp_path: Path, min_fast_frames: int, filmed: int
) -> None:
    e = evaluate_run(make_run(tmp_path / "run"), min_fast_frames=min_fast_frames)

    # Window [60 - 20, 60 + 15] s: fast frames at sim 40 and 60 s only.
    assert e.fast_window_s == (20.0, 15.0)
    assert e.divisions_filmed_fast == filmed


def test_phototoxicity_and_latency(tmp_path: Path) -> None:
    e = evaluate_run(make_run(tmp_path / "run"))

    assert (e.nuclei_seen, e.nuclei_arrested, e.nuclei_dead) == (3, 1, 1)
    assert e.divisions_prevented == 1
    assert e.latency_p50_ms == 15.0
    assert e.latency_p99_ms == pytest.approx(19.9)
    assert e.decisions == {"fast": 1, "hold": 1, "slow": 1, "fallback": 1}
    assert e.sim_duration_s == 200.0


def test_evaluation_json_is_written_and_the_table_shows_the_measures(
    tmp_path: Path,
) -> None:
    folder = make_run(tmp_path / "run")
    e = evaluate_run(folder)

    assert json.loads((folder / "evaluation.json").read_text()) == e.to_dict()
    console = Console(record=True, width=150)
    console.print(format_evaluation(e))
    text = console.export_text()
    assert "precision / recall / F1" in text
    assert "p001 0.21" in text


def test_a_run_without_ground_truth_is_refused_naming_the_folder(
    tmp_path: Path,
) -> None:
    folder = make_run(tmp_path / "plain", truth=False)

    with pytest.raises(RunFolderError, match="plain has no ground truth"):
        evaluate_run(folder)
    assert not (folder / "evaluation.json").exists()
    with pytest.raises(FileNotFoundError, match="empty is not a run folder"):
        evaluate_run(tmp_path / "empty")
