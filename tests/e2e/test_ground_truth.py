"""A short `run_simulation`: ground-truth divisions are where the images show them."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pytest
from run_files import read_labels, read_raw, read_table

from scopeloop.config import SimulationOptions
from scopeloop.sim import run_simulation

if TYPE_CHECKING:
    from pathlib import Path

    from scopeloop.sim import SimulationSummary

OFFSET = 100.0
NUCLEUS_PX = 10.0 / 0.5  # default nucleus diameter (10 um) in pixels
FRAMES, POSITIONS = 8, 2


def test_summary_matches_what_was_written(
    short_run: tuple[Path, SimulationSummary],
) -> None:
    out, summary = short_run

    _, divisions = read_table(out / "ground_truth" / "divisions.csv")
    _, frames = read_table(out / "ground_truth" / "frames.csv")

    assert summary.finished
    assert summary.frames == summary.frames_planned == FRAMES * POSITIONS == len(frames)
    assert summary.divisions == len(divisions)
    assert summary.sim_time_h == pytest.approx((FRAMES - 1) * 600 / 3600, abs=1e-3)
    assert summary.delivered_dose_mj == pytest.approx(
        FRAMES * POSITIONS * 2.0 * 50.0 / 1000
    )
    assert sorted({(int(r["frame"]), int(r["position"])) for r in frames}) == [
        (t, p) for t in range(FRAMES) for p in range(POSITIONS)
    ]
    for row in frames:
        assert float(row["sim_time_s"]) == pytest.approx(int(row["frame"]) * 600.0)


@pytest.mark.parametrize(
    "position", range(POSITIONS), ids=[f"p{p}" for p in range(POSITIONS)]
)
def test_labels_are_aligned_with_raw_frames(
    short_run: tuple[Path, SimulationSummary], position: int
) -> None:
    out, _ = short_run

    raw = read_raw(out, position)
    labels = read_labels(out, position)

    assert raw.shape == labels.shape == (FRAMES, 512, 512)
    assert raw.dtype == np.uint16
    # Labelled pixels are nuclei: brighter than the unlabelled background.
    for t in (0, FRAMES - 1):
        inside = raw[t][labels[t] > 0].astype(float).mean()
        outside = raw[t][labels[t] == 0].astype(float).mean()
        assert inside > outside + 10


def _near(labels: np.ndarray, label: int, y: float, x: float) -> float | None:
    """Distance (px) from (y, x) to the centroid of `label`, or None if absent."""
    ys, xs = np.nonzero(labels == label)
    if ys.size == 0:
        return None
    return float(np.hypot(ys.mean() - y, xs.mean() - x))


def test_divisions_are_at_the_ground_truth_places(
    short_run: tuple[Path, SimulationSummary],
) -> None:
    # Arrange
    out, _ = short_run
    _, divisions = read_table(out / "ground_truth" / "divisions.csv")
    _, nuclei = read_table(out / "ground_truth" / "nuclei.csv")
    phase_of = {(r["frame"], r["position"], r["id"]): r["phase"] for r in nuclei}
    assert divisions, (
        "the run should contain divisions (seed 0, 8 frames x 2 positions)"
    )
    both_seen = 0

    for row in divisions:
        frame, position = int(row["frame"]), int(row["position"])
        y, x = float(row["y"]), float(row["x"])
        daughters = [int(i) for i in row["daughter_ids"].split(";")]
        labels = read_labels(out, position)
        raw = read_raw(out, position)
        h, w = labels.shape[1:]
        interior = NUCLEUS_PX <= y < h - NUCLEUS_PX and NUCLEUS_PX <= x < w - NUCLEUS_PX

        # Act
        distances = [_near(labels[frame], d, y, x) for d in daughters]
        seen = [
            d for d, dist in zip(daughters, distances, strict=True) if dist is not None
        ]

        # Assert: the daughters are there, next to the division's place...
        assert len(daughters) == 2
        assert seen, f"no daughter of division {row} in the labels"
        if interior:
            assert len(seen) == 2, f"a daughter of {row} is missing"
            both_seen += 1
        for dist in distances:
            assert dist is None or dist < NUCLEUS_PX, row
        # ...bright in the raw image (condensed chromatin)...
        for d in seen:
            brightness = raw[frame][labels[frame] == d].astype(float).mean()
            assert brightness > OFFSET + 15, (row, d, brightness)
        # ...young: anaphase or telophase within 10 min of the division...
        for d in seen:
            key = (row["frame"], row["position"], str(d))
            if key in phase_of:
                assert phase_of[key] in {"anaphase", "telophase"}
        # ...and the mother was there in the previous frame, at the same place.
        if interior:
            assert frame >= 1
            mother = _near(labels[frame - 1], int(row["mother_id"]), y, x)
            assert mother is not None and mother < NUCLEUS_PX, row
            assert int(row["mother_id"]) not in labels[frame]
    assert both_seen >= 1


def test_no_division_goes_unreported(short_run: tuple[Path, SimulationSummary]) -> None:
    # Every pair of fresh sisters in the nuclei table (first seen in anaphase)
    # comes from a division in the divisions table.
    out, _ = short_run
    _, nuclei = read_table(out / "ground_truth" / "nuclei.csv")
    _, divisions = read_table(out / "ground_truth" / "divisions.csv")
    reported = {int(i) for r in divisions for i in r["daughter_ids"].split(";")}

    first_seen: dict[int, dict[str, str]] = {}
    for r in nuclei:
        first_seen.setdefault(int(r["id"]), r)
    fresh = {
        i
        for i, r in first_seen.items()
        if r["phase"] == "anaphase" and r["frame"] != "0"
    }

    assert fresh
    assert fresh <= reported


def test_z_stack_run_writes_tzyx_raw_and_one_label_image_per_time(
    tmp_path: Path,
) -> None:
    options = SimulationOptions(
        out=tmp_path / "run",
        frames=2,
        positions=1,
        z_planes=3,
        z_step_um=2.0,
        speedup=1e6,
    )

    summary = run_simulation(options)

    raw = read_raw(options.out, 0)
    labels = read_labels(options.out, 0)
    _, frames = read_table(options.out / "ground_truth" / "frames.csv")
    assert summary.frames == 6
    assert raw.shape == (2, 3, 512, 512)
    assert labels.shape == (2, 512, 512)
    focus = sorted({float(r["focus_um"]) for r in frames})
    assert focus == pytest.approx([-2.0, 0.0, 2.0])
    # The middle plane is in focus: the sharpest.
    peaks = [float(raw[0, z].max()) for z in range(3)]
    assert peaks[1] > max(peaks[0], peaks[2])


def test_run_refuses_a_folder_that_is_not_empty(tmp_path: Path) -> None:
    (tmp_path / "keep.txt").write_text("precious")

    from scopeloop.errors import ConfigError

    with pytest.raises(ConfigError, match="not empty"):
        run_simulation(SimulationOptions(out=tmp_path, frames=1, speedup=1e6))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]


def test_summary_names_a_raw_stream_that_exists(
    short_run: tuple[Path, SimulationSummary],
) -> None:
    out, summary = short_run

    assert (out / summary.raw).exists()
