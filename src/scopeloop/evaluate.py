"""Score a run on the simulated rig against its ground truth (`scopeloop evaluate`).

A controller run on `hardware_configs/demo.cfg` with the simulator's
`write_run_truth` hook has `ground_truth/` beside the run's own tables;
`evaluate_run` compares them and writes `evaluation.json` into the run folder.
Only files are read: no rig, no models.

Measures (times of true divisions are anaphase onsets in simulated seconds;
a "visit" is a frame of plane 0, i.e. one time point at one position):

- **Division detection**: the worker's divisions (`results/divisions.csv`)
  against the true divisions in view (`ground_truth/divisions.csv`). A
  detection matches a true division at the same position whose first visit
  showing the daughters is within `tolerance_frames` visits of the
  detection's frame, and whose place is within `match_radius_px` (one
  nucleus diameter) of the detection; each is matched at most once (optimal
  one-to-one assignment). Precision = matched / detected, recall = matched /
  true, F1 their harmonic mean.
- **Lead time**: for each true division at a position, the time from the
  first ``fast`` decision at that position within `lead_window_s` before it
  (by default prophase + metaphase: the visible part of mitosis before
  anaphase onset) to the division. Decision times (controller clock, wall
  seconds) are mapped to simulated time by the run's frames (a straight
  line through their wall and simulated times). Median over the divisions
  that have one.
- **Divisions filmed fast**: true divisions with at least `min_fast_frames`
  visits of their position in ``fast`` mode whose simulated time lies in the
  anaphase window [division - metaphase, division + anaphase] (the stage
  durations of the culture: metaphase before anaphase onset, anaphase
  after).
- **Dose**: total and per position, summed from `frames.csv`.
- **Phototoxicity**: of the nuclei that were ever in a field of view,
  how many ended arrested (alive), dead, and how many divisions the damage
  prevented (a nucleus stopped in interphase or dead whose cycle would have
  ended before the end of the run; an estimate).
- **Latency**: frame-to-decision latency (p50, p99) of `decisions.jsonl`.
- **Frames**: per mode, per stream state, skipped ones.
"""

from __future__ import annotations

import csv
import json
import math
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from rich.table import Table
from scipy.optimize import linear_sum_assignment

from scopeloop.errors import ScopeloopError
from scopeloop.storage import write_json

if TYPE_CHECKING:
    from collections.abc import Sequence
    from pathlib import Path

__all__ = [
    "DivisionPoint",
    "Evaluation",
    "RunFolderError",
    "RunTables",
    "SimClock",
    "evaluate_run",
    "format_evaluation",
    "match_divisions",
    "read_run",
]

DEFAULT_MITOSIS_S = 45 * 60.0
# Stage fractions of the simulator's mitosis, used when culture.json is absent.
_STAGES = {"prophase": 0.45, "metaphase": 0.30, "anaphase": 0.25, "telophase": 0.30}
_UNMATCHABLE = 1e9


class RunFolderError(ScopeloopError, FileNotFoundError):
    """A folder lacks what evaluation needs (the message names folder and file)."""


@dataclass(frozen=True, slots=True)
class DivisionPoint:
    """A division at a position: the visit (``t``) that shows it and its place."""

    position: int
    frame: int
    y: float
    x: float
    time_s: float | None = None
    """Simulated time of anaphase onset (true divisions only)."""


@dataclass(frozen=True, slots=True)
class SimClock:
    """Simulated time as a straight line in the run's wall time: a + b x wall."""

    offset_s: float
    speedup: float

    def sim(self, wall_s: float) -> float:
        """Simulated seconds at `wall_s` seconds of the run."""
        return self.offset_s + self.speedup * wall_s

    def wall(self, sim_s: float) -> float:
        """Seconds of the run at simulated time `sim_s`."""
        return (sim_s - self.offset_s) / self.speedup if self.speedup else 0.0

    @classmethod
    def fit(
        cls, wall_s: Sequence[float], sim_s: Sequence[float], speedup: float = 1.0
    ) -> SimClock:
        """The least-squares line through (wall, sim) pairs.

        With fewer than two distinct wall times the slope is `speedup`; a
        simulated clock that stood still gives slope 0.
        """
        w, s = np.asarray(wall_s, float), np.asarray(sim_s, float)
        if w.size == 0:
            return cls(0.0, speedup)
        if np.ptp(w) > 0:
            if np.ptp(s) == 0:  # a clock that did not move (Clock=Manual)
                return cls(float(s[0]), 0.0)
            slope, offset = np.polyfit(w, s, 1)
            return cls(float(offset), float(slope))
        return cls(float(s[0] - speedup * w[0]), speedup)


@dataclass(frozen=True)
class RunTables:
    """What a run folder holds, as read by `read_run` (tables as lists of rows)."""

    folder: Path
    frames: list[dict[str, str]]
    positions: list[str]
    detected: list[dict[str, str]]
    decisions: list[dict[str, Any]]
    truth_frames: list[dict[str, str]] | None = None
    truth_divisions: list[dict[str, str]] | None = None
    culture: dict[str, Any] | None = None
    clock: SimClock | None = None

    @property
    def has_truth(self) -> bool:
        """Whether the run has ground truth (`ground_truth/` from the simulator)."""
        return self.truth_frames is not None and self.truth_divisions is not None

    def stage_s(self, stage: str) -> float:
        """Duration of a mitosis stage in simulated seconds (from culture.json)."""
        if self.culture and stage in self.culture.get("mitosis_stages_s", {}):
            return float(self.culture["mitosis_stages_s"][stage])
        return _STAGES[stage] * DEFAULT_MITOSIS_S


def _read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def read_run(folder: Path) -> RunTables:
    """Read a run folder's tables (ground truth where there is some).

    Raises
    ------
    RunFolderError
        When `folder` has no `frames.csv` (not a run folder).

    """
    frames_csv = folder / "frames.csv"
    if not frames_csv.is_file():
        raise RunFolderError(f"{folder} is not a run folder: it has no frames.csv")
    frames = _read_csv(frames_csv)
    names: dict[int, str] = {}
    run_json = folder / "run.json"
    if run_json.is_file():
        record = json.loads(run_json.read_text())
        for i, p in enumerate(record.get("positions") or []):
            names[i] = str(p.get("name") or f"p{i:03d}")
    for r in frames:
        names.setdefault(int(r["position"]), r.get("position_name") or "")
    positions = [names.get(i) or f"p{i:03d}" for i in range(max(names, default=-1) + 1)]
    detected_csv = folder / "results" / "divisions.csv"
    detected = _read_csv(detected_csv) if detected_csv.is_file() else []
    decisions_file = folder / "decisions.jsonl"
    decisions = (
        [
            json.loads(line)
            for line in decisions_file.read_text().splitlines()
            if line.strip()
        ]
        if decisions_file.is_file()
        else []
    )
    truth = folder / "ground_truth"
    truth_frames = truth_divisions = None
    culture: dict[str, Any] | None = None
    clock = None
    if (truth / "frames.csv").is_file() and (truth / "divisions.csv").is_file():
        truth_frames = _read_csv(truth / "frames.csv")
        truth_divisions = _read_csv(truth / "divisions.csv")
        if (truth / "culture.json").is_file():
            culture = json.loads((truth / "culture.json").read_text())
        speedup = float((culture or {}).get("clock", {}).get("speedup", 1.0))
        timed = [r for r in truth_frames if r.get("time_s", "") != ""]
        clock = SimClock.fit(
            [float(r["time_s"]) for r in timed],
            [float(r["sim_time_s"]) for r in timed],
            speedup,
        )
    return RunTables(
        folder=folder,
        frames=frames,
        positions=positions,
        detected=detected,
        decisions=decisions,
        truth_frames=truth_frames,
        truth_divisions=truth_divisions,
        culture=culture,
        clock=clock,
    )


def match_divisions(
    detected: Sequence[DivisionPoint],
    true: Sequence[DivisionPoint],
    *,
    tolerance_frames: int = 2,
    radius_px: float = 20.0,
) -> list[tuple[int, int]]:
    """Pairs (detected index, true index) of matching divisions, one-to-one.

    A pair can match when both are at the same position, their frames
    (visits of that position) differ by at most `tolerance_frames` and their
    places by at most `radius_px`. Among the possible pairs, as many as
    possible are matched, then the closest (frames, then distance).
    """
    pairs: list[tuple[int, int]] = []
    for position in {d.position for d in detected} & {t.position for t in true}:
        di = [i for i, d in enumerate(detected) if d.position == position]
        ti = [j for j, t in enumerate(true) if t.position == position]
        cost = np.full((len(di), len(ti)), _UNMATCHABLE)
        for a, i in enumerate(di):
            d = detected[i]
            for b, j in enumerate(ti):
                t = true[j]
                dt = abs(d.frame - t.frame)
                dist = math.hypot(d.y - t.y, d.x - t.x)
                if dt <= tolerance_frames and dist <= radius_px:
                    cost[a, b] = dt / (tolerance_frames + 1) + dist / (radius_px + 1)
        rows, cols = linear_sum_assignment(cost)
        pairs += [
            (di[a], ti[b])
            for a, b in zip(rows, cols, strict=True)
            if cost[a, b] < _UNMATCHABLE
        ]
    return sorted(pairs)


@dataclass(frozen=True)
class Evaluation:
    """How a simulated run went, measured against its ground truth.

    See the module docstring for the precise meaning of each measure. Times
    are simulated seconds unless named otherwise; ``None`` where a measure
    has nothing to be computed from.
    """

    folder: str
    frames: int
    positions: tuple[str, ...]
    frames_per_mode: dict[str, int]
    fast_frames_per_position: tuple[int, ...]
    stream_states: dict[str, int]
    frames_skipped: int
    dose_total_mj: float
    dose_per_position_mj: tuple[float, ...]
    true_divisions: int
    detected_divisions: int
    matched_divisions: int
    precision: float | None
    recall: float | None
    f1: float | None
    tolerance_frames: int
    match_radius_px: float
    lead_window_s: float
    lead_times_s: tuple[float, ...]
    lead_time_median_s: float | None
    fast_window_s: tuple[float, float]
    min_fast_frames: int
    divisions_filmed_fast: int
    nuclei_seen: int | None
    nuclei_arrested: int | None
    nuclei_dead: int | None
    divisions_prevented: int | None
    decisions: dict[str, int] = field(default_factory=dict)
    latency_p50_ms: float | None = None
    latency_p99_ms: float | None = None
    sim_duration_s: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready values (tuples as lists)."""
        out: dict[str, Any] = json.loads(json.dumps(asdict(self)))
        return out


def _quantile(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    return round(float(np.quantile(np.asarray(values, float), q)), 3)


def _ratio(n: int, d: int) -> float | None:
    return round(n / d, 4) if d else None


def evaluate_run(
    folder: Path,
    *,
    tolerance_frames: int = 2,
    min_fast_frames: int = 3,
    match_radius_px: float | None = None,
    lead_window_s: float | None = None,
    write: bool = True,
) -> Evaluation:
    """Score the run in `folder` against its ground truth.

    Parameters
    ----------
    folder
        A run folder of `scopeloop run` on a simulated rig, with `ground_truth/`.
    tolerance_frames
        How many visits of a position a detected division may be off.
    min_fast_frames
        Fast visits in the anaphase window for a division to count as filmed
        at the fast rate.
    match_radius_px
        Largest distance between a detected and a true division; default one
        nucleus diameter (from the culture's parameters), else 20 pixels.
    lead_window_s
        How long before a division a ``fast`` decision counts as foreseeing
        it; default prophase + metaphase.
    write
        Write `evaluation.json` into the run folder.

    Raises
    ------
    RunFolderError
        When `folder` is not a run folder or has no ground truth.

    """
    run = read_run(folder)
    if not run.has_truth:
        raise RunFolderError(
            f"{folder} has no ground truth (ground_truth/frames.csv and "
            "divisions.csv): only runs on a simulated rig, with the simulator's "
            "ground-truth hook, can be evaluated"
        )
    assert run.truth_frames is not None and run.truth_divisions is not None
    assert run.clock is not None
    n_positions = len(run.positions)
    frames = run.frames
    visit_of = {int(r["index"]): (int(r["position"]), int(r["t"])) for r in frames}

    # -- divisions detected ---------------------------------------------------
    culture = run.culture or {}
    if match_radius_px is None:
        params = culture.get("params", {})
        sites = culture.get("positions", [])
        pixel_um = float(sites[0]["pixel_um"]) if sites else 0.0
        diameter = float(params.get("nucleus_diameter_um", 0.0))
        match_radius_px = diameter / pixel_um if pixel_um and diameter else 20.0
    true = [
        DivisionPoint(
            int(r["position"]),
            int(r["frame"]),
            float(r["y"]),
            float(r["x"]),
            float(r["sim_time_s"]),
        )
        for r in run.truth_divisions
    ]
    detected = [
        DivisionPoint(
            int(r["position"]),
            visit_of.get(int(r["frame_index"]), (0, -(10**9)))[1],
            float(r["y"]),
            float(r["x"]),
        )
        for r in run.detected
    ]
    matched = len(
        match_divisions(
            detected,
            true,
            tolerance_frames=tolerance_frames,
            radius_px=match_radius_px,
        )
    )
    precision = _ratio(matched, len(detected))
    recall = _ratio(matched, len(true))
    # The harmonic mean of precision and recall; 0 when one side is empty.
    f1 = _ratio(2 * matched, len(detected) + len(true))

    # -- lead time ------------------------------------------------------------
    window = (
        lead_window_s
        if lead_window_s is not None
        else run.stage_s("prophase") + run.stage_s("metaphase")
    )
    fast_at: dict[int, list[float]] = {}
    for d in run.decisions:
        if d.get("action") == "fast" and d.get("position") is not None:
            fast_at.setdefault(int(d["position"]), []).append(
                run.clock.sim(float(d["time_s"]))
            )
    leads = []
    for t in true:
        assert t.time_s is not None
        before = [s for s in fast_at.get(t.position, []) if 0 <= t.time_s - s <= window]
        if before:
            leads.append(round(t.time_s - min(before), 3))

    # -- divisions filmed fast --------------------------------------------------
    sim_of = {int(r["index"]): float(r["sim_time_s"]) for r in run.truth_frames}
    fast_visits: dict[int, list[float]] = {}
    for r in frames:
        index = int(r["index"])
        if r["mode"] == "fast" and int(r["z"] or 0) == 0 and index in sim_of:
            fast_visits.setdefault(int(r["position"]), []).append(sim_of[index])
    before_s, after_s = run.stage_s("metaphase"), run.stage_s("anaphase")
    filmed = 0
    for t in true:
        assert t.time_s is not None
        lo, hi = t.time_s - before_s, t.time_s + after_s
        n = sum(lo <= s <= hi for s in fast_visits.get(t.position, []))
        filmed += n >= min_fast_frames

    # -- frames and dose --------------------------------------------------------
    dose = [0.0] * n_positions
    fast_frames = [0] * n_positions
    for r in frames:
        p = int(r["position"])
        dose[p] += float(r["dose_mj"] or 0.0)
        fast_frames[p] += r["mode"] == "fast"
    states = Counter(r["stream"] for r in frames)

    # -- phototoxicity ------------------------------------------------------------
    nuclei = culture.get("nuclei")
    seen = arrested = dead = prevented = None
    if nuclei is not None:
        seen = len(nuclei)
        dead = sum(bool(n["dead"]) for n in nuclei)
        arrested = sum(bool(n["arrested"]) and not n["dead"] for n in nuclei)
        prevented = sum(bool(n.get("division_prevented")) for n in nuclei)

    latencies = [
        float(d["latency_ms"]) for d in run.decisions if d.get("latency_ms") is not None
    ]
    duration = None
    if "sim_end_s" in culture and "sim_start_s" in culture:
        duration = round(float(culture["sim_end_s"]) - float(culture["sim_start_s"]), 3)
    evaluation = Evaluation(
        folder=str(folder),
        frames=len(frames),
        positions=tuple(run.positions),
        frames_per_mode=dict(Counter(r["mode"] for r in frames)),
        fast_frames_per_position=tuple(fast_frames),
        stream_states=dict(states),
        frames_skipped=states.get("skipped", 0),
        dose_total_mj=round(sum(dose), 6),
        dose_per_position_mj=tuple(round(d, 6) for d in dose),
        true_divisions=len(true),
        detected_divisions=len(detected),
        matched_divisions=matched,
        precision=precision,
        recall=recall,
        f1=f1,
        tolerance_frames=tolerance_frames,
        match_radius_px=round(match_radius_px, 3),
        lead_window_s=round(window, 3),
        lead_times_s=tuple(leads),
        lead_time_median_s=_quantile(leads, 0.5),
        fast_window_s=(round(before_s, 3), round(after_s, 3)),
        min_fast_frames=min_fast_frames,
        divisions_filmed_fast=filmed,
        nuclei_seen=seen,
        nuclei_arrested=arrested,
        nuclei_dead=dead,
        divisions_prevented=prevented,
        decisions=dict(Counter(str(d.get("action")) for d in run.decisions)),
        latency_p50_ms=_quantile(latencies, 0.5),
        latency_p99_ms=_quantile(latencies, 0.99),
        sim_duration_s=duration,
    )
    if write:
        write_json(folder / "evaluation.json", evaluation.to_dict())
    return evaluation


def _fmt(value: float | None, unit: str = "", digits: int = 3) -> str:
    if value is None:
        return "-"
    return f"{value:.{digits}g}{unit}"


def format_evaluation(e: Evaluation) -> Table:
    """A two-column table of the measures, for the terminal (rich)."""
    table = Table(title=f"evaluation of {e.folder}", show_header=True)
    table.add_column("measure")
    table.add_column("value", justify="right")
    per_position = ", ".join(
        f"{name} {dose:.4g}"
        for name, dose in zip(e.positions, e.dose_per_position_mj, strict=True)
    )
    lead = (
        f"{_fmt(e.lead_time_median_s, ' s')} median over {len(e.lead_times_s)} "
        f"(window {e.lead_window_s:g} s)"
    )
    filmed = (
        f"{e.divisions_filmed_fast} of {e.true_divisions} (>= {e.min_fast_frames} "
        f"fast frames in -{e.fast_window_s[0]:g}..+{e.fast_window_s[1]:g} s)"
    )
    modes = ", ".join(f"{k} {v}" for k, v in sorted(e.frames_per_mode.items()))
    rows = [
        ("frames", f"{e.frames} ({modes})"),
        ("frames skipped (stream)", str(e.frames_skipped)),
        ("divisions: true / detected / matched",
         f"{e.true_divisions} / {e.detected_divisions} / {e.matched_divisions}"),
        ("precision / recall / F1",
         f"{_fmt(e.precision)} / {_fmt(e.recall)} / {_fmt(e.f1)}"),
        ("lead time before anaphase (sim)", lead),
        ("divisions filmed fast", filmed),
        ("dose total (mJ)", f"{e.dose_total_mj:.4g}"),
        ("dose per position (mJ)", per_position),
        ("nuclei seen / arrested / dead",
         f"{_fmt_int(e.nuclei_seen)} / {_fmt_int(e.nuclei_arrested)} / "
         f"{_fmt_int(e.nuclei_dead)}"),
        ("divisions prevented by light (est.)", _fmt_int(e.divisions_prevented)),
        ("frame-to-decision latency p50 / p99",
         f"{_fmt(e.latency_p50_ms, ' ms')} / {_fmt(e.latency_p99_ms, ' ms')}"),
    ]  # fmt: skip
    for name, value in rows:
        table.add_row(name, value)
    return table


def _fmt_int(value: int | None) -> str:
    return "-" if value is None else str(value)
