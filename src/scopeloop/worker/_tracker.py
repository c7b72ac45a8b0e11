"""Online nucleus tracking with 1 -> 2 splits, one tracker per stage position.

Each new frame's nuclei are linked to the tracks of the previous frames by a
gated optimal assignment on centroid distance (scaled by nucleus size, so the
same settings work at any pixel size). A division is a track that was in
mitosis (its recent mitosis score passed `division_score`) and now has two
nuclei near where it was: both become new tracks (the daughters), the mother's
track ends, and a `Division` records the event. Tracks that find no nucleus
survive `max_gap` frames before they end.

Two touching nuclei that the segmenter sees as one for a few frames look like
a division when they part again, and the merged blob often scores as
mitotic (a dumbbell, like telophase). A track that was not in mitosis and
whose nucleus suddenly grows (radius up by `merge_growth`) is taken for such a
merge: its radius is not updated and it cannot divide until its nucleus is
back to its size.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
from scipy.optimize import linear_sum_assignment

if TYPE_CHECKING:
    from numpy.typing import NDArray

__all__ = ["Detection", "Division", "Track", "Tracker", "TrackerSettings"]

_FAR = 1e9


@dataclass(frozen=True, slots=True)
class Detection:
    """One nucleus found in a frame."""

    label: int
    y: float
    x: float
    area: float
    score: float = 0.0

    @property
    def radius(self) -> float:
        """Radius of a disc of the same area."""
        return math.sqrt(max(self.area, 1.0) / math.pi)


@dataclass(slots=True)
class Track:
    """A nucleus followed from frame to frame."""

    id: int
    first_frame: int
    last_frame: int
    y: float
    x: float
    radius: float
    parent: int = 0
    scores: deque[float] = field(default_factory=lambda: deque(maxlen=4))
    vy: float = 0.0
    vx: float = 0.0
    can_divide: bool = True
    """False for daughters until they are seen out of mitosis."""
    merged: bool = False
    """True while its nucleus looks like two nuclei seen as one."""

    @property
    def recent_score(self) -> float:
        """Highest mitosis score over the last few frames."""
        return max(self.scores, default=0.0)


@dataclass(frozen=True, slots=True)
class Division:
    """A mother track that split into two daughter tracks at `frame`."""

    frame: int
    y: float
    x: float
    mother_id: int
    daughter_ids: tuple[int, int]
    score: float


@dataclass(frozen=True, slots=True)
class TrackerSettings:
    """How far nuclei may move and what makes a split a division.

    Distances are in units of the nucleus radius.
    """

    max_step: float = 1.5
    """Farthest a nucleus moves between two frames and stays the same track."""
    split_distance: float = 2.5
    """Farthest a daughter lies from where its mother was."""
    division_score: float = 0.5
    """Recent mitosis score a mother needs for a split to count as a division."""
    split_midpoint: float = 1.5
    """Farthest the daughters' midpoint lies from where the mother was."""
    split_size: float = 0.4
    """Largest relative difference in radius between two daughters."""
    max_gap: int = 2
    """Frames a track survives without a nucleus before it ends."""
    merge_growth: float = 1.3
    """Radius ratio above which a nucleus that was not in mitosis and grew
    from one frame to the next is taken for two merged nuclei."""


class Tracker:
    """Tracks and lineage at one stage position, updated frame by frame."""

    def __init__(self, settings: TrackerSettings | None = None) -> None:
        self.settings = settings or TrackerSettings()
        self.tracks: dict[int, Track] = {}
        self.ended: list[Track] = []
        self.divisions: list[Division] = []
        self._next_id = 1
        self._frame = -1

    def update(
        self, frame: int, detections: list[Detection]
    ) -> tuple[dict[int, int], list[Division]]:
        """Link the nuclei of `frame` to the tracks.

        Returns the track id of every detection (by its label) and the
        divisions completed in this frame.
        """
        if frame <= self._frame:
            raise ValueError(
                f"frames must arrive in order: got {frame} after {self._frame}"
            )
        self._frame = frame
        s = self.settings
        for track in list(self.tracks.values()):
            if frame - track.last_frame > s.max_gap:
                self._end(track)
        tracks = list(self.tracks.values())
        links = self._link(tracks, detections)
        linked_dets = {di for _, di in links}
        assigned: dict[int, int] = {}
        divisions: list[Division] = []
        # A mother in mitosis with two nuclei on either side of where it was
        # divides; the best-placed hypotheses claim their nuclei first.
        free = {d for d in range(len(detections)) if d not in linked_dets}
        partner_of = dict(links)
        for cost, ti, pair in sorted(
            self._splits(tracks, detections, free, partner_of)
        ):
            del cost
            if ti not in partner_of and any(d not in free for d in pair):
                continue
            if ti in partner_of and (
                partner_of[ti] not in pair
                or any(d not in free for d in pair if d != partner_of[ti])
            ):
                continue
            track = tracks[ti]
            daughters = tuple(
                self._start(frame, detections[d], parent=track.id) for d in pair
            )
            for d, daughter in zip(pair, daughters, strict=True):
                assigned[detections[d].label] = daughter.id
                free.discard(d)
            partner_of.pop(ti, None)
            division = Division(
                frame=frame,
                y=float(np.mean([detections[d].y for d in pair])),
                x=float(np.mean([detections[d].x for d in pair])),
                mother_id=track.id,
                daughter_ids=(daughters[0].id, daughters[1].id),
                score=float(track.recent_score),
            )
            divisions.append(division)
            self._end(track)
        for ti, di in partner_of.items():
            self._continue(tracks[ti], frame, detections[di])
            assigned[detections[di].label] = tracks[ti].id
        for d in sorted(free):
            assigned[detections[d].label] = self._start(frame, detections[d]).id
        self.divisions.extend(divisions)
        return assigned, divisions

    # -- linking ------------------------------------------------------------

    def _splits(
        self,
        tracks: list[Track],
        detections: list[Detection],
        free: set[int],
        partner_of: dict[int, int],
    ) -> list[tuple[float, int, tuple[int, int]]]:
        """Every plausible (cost, mother, daughters) division hypothesis."""
        s = self.settings
        out: list[tuple[float, int, tuple[int, int]]] = []
        for ti, track in enumerate(tracks):
            if (
                not track.can_divide
                or track.merged
                or track.recent_score < s.division_score
            ):
                continue
            reach = s.split_distance * track.radius
            near = [
                d
                for d in free
                if math.dist((detections[d].y, detections[d].x), (track.y, track.x))
                <= reach
            ]
            partner = partner_of.get(ti)
            pool = near if partner is None else [partner]
            for i, a in enumerate(pool):
                for b in near if partner is not None else pool[i + 1 :]:
                    if a == b:
                        continue
                    da, db = detections[a], detections[b]
                    mid = math.dist(
                        ((da.y + db.y) / 2, (da.x + db.x) / 2), (track.y, track.x)
                    )
                    size = abs(da.radius - db.radius) / max(da.radius, db.radius)
                    if mid > s.split_midpoint * track.radius or size > s.split_size:
                        continue
                    pair = (a, b) if a < b else (b, a)
                    out.append((mid / track.radius + size, ti, pair))
        return out

    def _link(
        self, tracks: list[Track], detections: list[Detection]
    ) -> list[tuple[int, int]]:
        if not tracks or not detections:
            return []
        ty = np.array([t.y + t.vy for t in tracks])
        tx = np.array([t.x + t.vx for t in tracks])
        tr = np.array([t.radius for t in tracks])
        dy = np.array([d.y for d in detections])
        dx = np.array([d.x for d in detections])
        dist = np.hypot(ty[:, None] - dy[None, :], tx[:, None] - dx[None, :])
        gate = self.settings.max_step * tr[:, None]
        cost: NDArray[np.float64] = np.where(dist <= gate, dist / tr[:, None], _FAR)
        rows, cols = linear_sum_assignment(cost)
        return [
            (int(r), int(c))
            for r, c in zip(rows, cols, strict=True)
            if cost[r, c] < _FAR
        ]

    def _start(self, frame: int, d: Detection, parent: int = 0) -> Track:
        track = Track(
            id=self._next_id,
            first_frame=frame,
            last_frame=frame,
            y=d.y,
            x=d.x,
            radius=d.radius,
            parent=parent,
            can_divide=parent == 0,
        )
        track.scores.append(d.score)
        self._next_id += 1
        self.tracks[track.id] = track
        return track

    def _continue(self, track: Track, frame: int, d: Detection) -> None:
        steps = frame - track.last_frame
        track.vy = 0.5 * track.vy + 0.5 * (d.y - track.y) / steps
        track.vx = 0.5 * track.vx + 0.5 * (d.x - track.x) / steps
        track.y, track.x, track.last_frame = d.y, d.x, frame
        s = self.settings
        grew = d.radius > s.merge_growth * track.radius
        track.merged = grew and (track.merged or track.recent_score < s.division_score)
        if not track.merged:
            track.radius = 0.7 * track.radius + 0.3 * d.radius
        track.scores.append(d.score)
        if d.score < s.division_score:
            track.can_divide = True

    def _end(self, track: Track) -> None:
        self.tracks.pop(track.id, None)
        self.ended.append(track)
