"""The online tracker: linking, gaps, 1 -> 2 divisions, lineage, on ground truth."""

from __future__ import annotations

import math

import numpy as np
import pytest

from scopeloop.models._data import simulate_clip
from scopeloop.sim import CultureParams, SensorModel
from scopeloop.worker import Detection, Tracker, TrackerSettings

R = 5.0
AREA = math.pi * R**2


def nucleus(
    label: int, y: float, x: float, score: float = 0.0, area: float = AREA
) -> Detection:
    return Detection(label, y, x, area, score)


def test_nuclei_that_move_a_little_keep_their_track() -> None:
    tracker = Tracker()
    first, _ = tracker.update(0, [nucleus(1, 10, 10), nucleus(2, 40, 40)])
    # Labels are per frame: the same nuclei come back under swapped labels.
    second, divisions = tracker.update(1, [nucleus(7, 42, 41), nucleus(8, 11, 12)])
    assert divisions == []
    assert second[8] == first[1]
    assert second[7] == first[2]


def test_a_nucleus_too_far_away_starts_a_new_track() -> None:
    tracker = Tracker()
    first, _ = tracker.update(0, [nucleus(1, 10, 10)])
    second, _ = tracker.update(1, [nucleus(1, 10, 10 + 3 * R)])
    assert second[1] != first[1]


def test_a_track_survives_a_gap_but_not_a_longer_one() -> None:
    tracker = Tracker(TrackerSettings(max_gap=2))
    first, _ = tracker.update(0, [nucleus(1, 10, 10)])
    again, _ = tracker.update(2, [nucleus(1, 10, 11)])
    assert again[1] == first[1]
    later, _ = tracker.update(6, [nucleus(1, 10, 11)])
    assert later[1] != first[1]


def test_frames_out_of_order_are_refused() -> None:
    tracker = Tracker()
    tracker.update(3, [])
    with pytest.raises(ValueError, match="in order"):
        tracker.update(3, [])


def test_a_mitotic_nucleus_that_splits_is_a_division_with_lineage() -> None:
    tracker = Tracker()
    tracker.update(0, [nucleus(1, 50, 50, score=0.1), nucleus(2, 10, 90)])
    before, _ = tracker.update(1, [nucleus(1, 50, 51, score=0.9), nucleus(2, 10, 90)])
    mother = before[1]
    after, divisions = tracker.update(
        2, [nucleus(3, 50, 45, 0.9), nucleus(4, 51, 57, 0.9), nucleus(5, 10, 90)]
    )
    assert len(divisions) == 1
    division = divisions[0]
    assert division.mother_id == mother
    assert set(division.daughter_ids) == {after[3], after[4]}
    assert mother not in division.daughter_ids
    assert division.y == pytest.approx(50.5)
    assert division.x == pytest.approx(51)
    assert division.score == pytest.approx(0.9)
    daughters = [tracker.tracks[i] for i in division.daughter_ids]
    assert all(d.parent == mother for d in daughters)
    assert after[5] == before[2]  # the bystander kept its track


def test_a_split_without_mitosis_is_not_a_division() -> None:
    tracker = Tracker()
    tracker.update(0, [nucleus(1, 50, 50, score=0.1)])
    _, divisions = tracker.update(1, [nucleus(3, 50, 45, 0.1), nucleus(4, 50, 56, 0.1)])
    assert divisions == []


def test_daughters_do_not_divide_again_before_leaving_mitosis() -> None:
    tracker = Tracker()
    tracker.update(0, [nucleus(1, 50, 50, score=0.9)])
    _, first = tracker.update(1, [nucleus(2, 50, 45, 0.9), nucleus(3, 50, 56, 0.9)])
    assert len(first) == 1
    # A daughter seen as two pieces while still in mitosis: no new division.
    _, second = tracker.update(
        2, [nucleus(4, 50, 42, 0.9), nucleus(5, 50, 47, 0.9), nucleus(6, 50, 57, 0.9)]
    )
    assert second == []


def test_two_nuclei_seen_as_one_then_apart_are_not_a_division() -> None:
    # Two touching interphase nuclei merged by the segmenter for two frames:
    # the blob scores as mitotic (a dumbbell), but it grew suddenly from a
    # nucleus that was not in mitosis, so its parting is not a division.
    tracker = Tracker()
    tracker.update(0, [nucleus(1, 50, 44, score=0.1), nucleus(2, 50, 57, score=0.1)])
    tracker.update(1, [nucleus(1, 50, 50, area=600, score=0.9)])
    tracker.update(2, [nucleus(1, 50, 50, area=600, score=0.9)])
    _, divisions = tracker.update(
        3, [nucleus(3, 50, 44, score=0.1), nucleus(4, 50, 57, score=0.1)]
    )
    assert divisions == []


def test_a_mitotic_nucleus_that_grows_before_it_splits_still_divides() -> None:
    # Anaphase seen as one elongated blob: the growth follows mitosis, so it
    # is not a merge.
    tracker = Tracker()
    tracker.update(0, [nucleus(1, 50, 50, score=0.9)])
    tracker.update(1, [nucleus(1, 50, 50, area=600, score=0.9)])
    _, divisions = tracker.update(2, [nucleus(2, 50, 44, 0.9), nucleus(3, 50, 57, 0.9)])
    assert len(divisions) == 1


def test_divisions_on_ground_truth_labels_are_found() -> None:
    """Perfect labels and phase scores: the tracker's own share of the error."""
    params = CultureParams(seed=4, cycle_h=3.0, slide_width_um=400, slide_height_um=400)
    clip = simulate_clip(
        params,
        SensorModel(),
        shape=(256, 256),
        frames=24,
        interval_s=180,
        start_s=3600,
        pixel_um=1.0,
    )
    tracker = Tracker()
    found = []
    for t in range(len(clip)):
        view = clip.nuclei[t]
        phase = dict(zip(view.ids.tolist(), view.phase.tolist(), strict=True))
        detections = []
        for label in np.unique(clip.labels[t])[1:]:
            ys, xs = np.nonzero(clip.labels[t] == label)
            score = 1.0 if phase.get(int(label), 0) in (1, 2, 3, 4) else 0.0
            detections.append(
                Detection(int(label), ys.mean(), xs.mean(), ys.size, score)
            )
        found += tracker.update(t, detections)[1]
    truth = list(clip.divisions)
    assert len(truth) >= 5
    matched = 0
    for event in truth:
        if any(
            abs(d.frame - event.frame) <= 2
            and math.hypot(d.y - event.y, d.x - event.x) < 15
            for d in found
        ):
            matched += 1
    recall = matched / len(truth)
    precision = sum(
        any(
            abs(d.frame - e.frame) <= 2 and math.hypot(d.y - e.y, d.x - e.x) < 15
            for e in truth
        )
        for d in found
    ) / max(len(found), 1)
    assert recall >= 0.8
    assert precision >= 0.8
