"""Ground truth for a controller run on the simulated rig.

`scopeloop run` acquires through its own event source, so the simulator does
not know which frame is which; the run's frame table does. `write_run_truth`
is the `on_finished` hook of `run_session`: it matches the run's frames to the
world's exposures (one exposure per frame, the run's frames being the last
ones the camera made) and writes `ground_truth/` as `scopeloop simulate`
does, plus `ground_truth/culture.json` with what scoring needs about the
culture at the end of the run (dose, arrest and death of every nucleus that
was in a field of view, and the divisions near the fields).
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from scopeloop.errors import DeviceError

from ._culture import (
    ANAPHASE_FRACTION,
    METAPHASE_FRACTION,
    PROPHASE_FRACTION,
    TELOPHASE_FRACTION,
    Phase,
)
from ._devices import world_of
from ._truth import (
    DIVISION_COLUMNS,
    FRAME_COLUMNS,
    AcquiredFrame,
    _write_csv,
    division_rows,
    frame_row,
    write_ground_truth,
)

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from pathlib import Path

    from ._culture import Culture, Division
    from ._world import Exposure, World

__all__ = ["CULTURE_VERSION", "write_run_truth"]

logger = logging.getLogger("scopeloop.sim")

CULTURE_VERSION = 1
RUN_FRAME_COLUMNS = (*FRAME_COLUMNS, "time_s")
RUN_DIVISION_COLUMNS = (*DIVISION_COLUMNS, "frame_index")


def write_run_truth(
    core: Any, folder: Path, rows: Sequence[Mapping[str, Any]]
) -> dict[str, int] | None:
    """Write `folder/ground_truth/` for a controller run on a simulated rig.

    Parameters
    ----------
    core
        The run's core, still loaded (a `UniMMCore`).
    folder
        The run folder.
    rows
        The rows of the run's `frames.csv`, in acquisition order (at least
        ``index``, ``position``, ``position_name``, ``t``, ``z``, ``time_s``,
        ``exposure_ms``).

    Returns
    -------
    dict[str, int] | None
        Counts of what was written (``frames``, ``nuclei_rows``,
        ``divisions``, ``nuclei``), or None when the rig is not simulated.

    Raises
    ------
    DeviceError
        When the frames cannot be matched to the world's exposures.

    Notes
    -----
    `ground_truth/frames.csv` has the columns of `scopeloop simulate` with
    ``index`` the run's frame index (as in the run's `frames.csv`), ``frame``
    the visit of that position (``t``) and ``time_s`` the run's wall-clock
    time; `divisions.csv` has a ``frame_index`` column (the run's index of
    the first frame showing the daughters) besides ``frame`` (that visit).
    With ``Clock=Wall`` simulated time runs ``SpeedUp`` times faster than the
    wall clock, so ``sim_time_s`` grows with ``time_s``.

    """
    try:
        world = world_of(core)
    except (DeviceError, AttributeError):  # not a simulated rig
        return None
    frames = _match(world, rows)
    out = folder / "ground_truth"
    params = world.params
    slide = (params.slide_width_um, params.slide_height_um)
    counts = write_ground_truth(out, frames, world.culture.divisions, slide)
    # The run's own frame indices and clock, which `simulate` does not have.
    _write_csv(
        out / "frames.csv",
        RUN_FRAME_COLUMNS,
        [
            {
                **frame_row(f),
                "index": int(row["index"]),
                "time_s": row.get("time_s", ""),
            }
            for f, row in zip(frames, rows, strict=True)
        ],
    )
    first_index: dict[tuple[int, int], int] = {}
    for f, row in zip(frames, rows, strict=True):
        first_index.setdefault((f.frame, f.position), int(row["index"]))
    visible = division_rows(frames, world.culture.divisions, slide)
    for d in visible:
        d["frame_index"] = first_index[(int(str(d["frame"])), int(str(d["position"])))]
    _write_csv(out / "divisions.csv", RUN_DIVISION_COLUMNS, visible)
    culture = _culture_record(world, frames, rows, visible)
    (out / "culture.json").write_text(json.dumps(culture, indent=2))
    return {
        "frames": len(frames),
        "nuclei_rows": counts["nuclei_rows"],
        "divisions": len(visible),
        "nuclei": len(culture["nuclei"]),
    }


def _match(world: World, rows: Sequence[Mapping[str, Any]]) -> list[AcquiredFrame]:
    """Each frame with its exposure: the run's frames are the last exposures."""
    exposures = world.exposures
    if len(exposures) < len(rows):
        raise DeviceError(
            f"{len(rows)} frames were acquired but the camera made "
            f"{len(exposures)} exposures: ground truth cannot be matched"
        )
    mine = exposures[len(exposures) - len(rows) :]
    frames = []
    for row, e in zip(rows, mine, strict=True):
        asked = row.get("exposure_ms", "")
        if asked not in ("", None) and not math.isclose(
            float(asked), e.exposure_ms, rel_tol=1e-6, abs_tol=1e-9
        ):
            raise DeviceError(
                f"frame {row['index']}: exposure {asked} ms in frames.csv but "
                f"{e.exposure_ms} ms at the camera: ground truth cannot be matched"
            )
        frames.append(
            AcquiredFrame(
                frame=int(row.get("t", 0) or 0),
                position=int(row.get("position", 0) or 0),
                z=int(row.get("z", 0) or 0),
                exposure=e,
            )
        )
    return frames


@dataclass
class _Seen:
    """A nucleus seen in the fields of view (centre inside an image)."""

    first_s: float
    last_s: float
    positions: set[int] = field(default_factory=set)
    dose_mj: float = 0.0
    """Dose after the last exposure that saw it."""
    first_dose_mj: float = 0.0
    """Dose before the first exposure that saw it."""
    arrested_s: float | None = None
    """First exposure after which its dose passed the arrest dose."""


def _in_image(e: Exposure) -> np.ndarray:
    v, (h, w) = e.nuclei, e.shape
    # The illuminated field: the nuclei whose centre is within the image edges.
    return (
        (v.y_px >= -0.5) & (v.y_px <= h - 0.5) & (v.x_px >= -0.5) & (v.x_px <= w - 0.5)
    )


def _seen_nuclei(frames: Sequence[AcquiredFrame], arrest_mj: float) -> dict[int, _Seen]:
    seen: dict[int, _Seen] = {}
    for f in frames:
        e = f.exposure
        v = e.nuclei
        for k in np.flatnonzero(_in_image(e)):
            nid = int(v.ids[k])
            s = seen.get(nid)
            if s is None:
                s = seen[nid] = _Seen(e.time_s, e.time_s)
                s.first_dose_mj = float(v.dose_mj[k])
            s.last_s = e.time_s
            s.positions.add(f.position)
            s.dose_mj = float(v.dose_mj[k]) + e.dose_mj
            if s.arrested_s is None and s.dose_mj >= arrest_mj:
                s.arrested_s = e.time_s
    return seen


def _culture_record(
    world: World,
    frames: Sequence[AcquiredFrame],
    rows: Sequence[Mapping[str, Any]],
    visible: Sequence[Mapping[str, object]],
) -> dict[str, Any]:
    culture, params = world.culture, world.params
    mitosis_s = params.mitosis_min * 60
    start_s = frames[0].exposure.time_s if frames else culture.time_s
    end_s = culture.time_s
    seen = _seen_nuclei(frames, params.arrest_dose_mj)
    births = {d: div for div in culture.divisions for d in div.daughter_ids}
    divided = {div.mother_id: div for div in culture.divisions}
    phases = culture.phases()
    row_of = {int(nid): i for i, nid in enumerate(culture.ids)}
    nuclei = [
        _nucleus(nid, s, culture, row_of.get(nid), phases, births, divided, end_s)
        for nid, s in sorted(seen.items())
    ]
    related = [
        d
        for d in culture.divisions
        if start_s <= d.time_s <= end_s
        and (d.mother_id in seen or any(i in seen for i in d.daughter_ids))
    ]
    places: dict[int, list[dict[str, object]]] = {}
    for r in visible:
        places.setdefault(int(str(r["mother_id"])), []).append(
            {
                "position": r["position"],
                "frame": r["frame"],
                "frame_index": r["frame_index"],
                "y": r["y"],
                "x": r["x"],
            }
        )
    listed = {d.mother_id for d in related}
    related += [
        d
        for d in culture.divisions
        if d.mother_id in places and d.mother_id not in listed
    ]
    related.sort(key=lambda d: d.time_s)
    positions: dict[int, dict[str, Any]] = {}
    for f, row in zip(frames, rows, strict=True):
        positions.setdefault(
            f.position,
            {
                "position": f.position,
                "name": str(row.get("position_name", "")) or f"p{f.position:03d}",
                "stage_x_um": f.exposure.stage_x_um,
                "stage_y_um": f.exposure.stage_y_um,
                "shape": list(f.exposure.shape),
                "pixel_um": f.exposure.pixel_um,
            },
        )
    return {
        "version": CULTURE_VERSION,
        "clock": {"mode": world.clock.value, "speedup": world.speedup},
        "sim_start_s": round(start_s, 3),
        "sim_end_s": round(end_s, 3),
        "params": params.model_dump(mode="json"),
        "mitosis_stages_s": {
            "prophase": PROPHASE_FRACTION * mitosis_s,
            "metaphase": METAPHASE_FRACTION * mitosis_s,
            "anaphase": ANAPHASE_FRACTION * mitosis_s,
            "telophase": TELOPHASE_FRACTION * mitosis_s,
        },
        "positions": [positions[p] for p in sorted(positions)],
        "nuclei": nuclei,
        "divisions": [
            {
                "sim_time_s": round(d.time_s, 3),
                "x_um": round(d.x_um, 3),
                "y_um": round(d.y_um, 3),
                "mother_id": d.mother_id,
                "daughter_ids": list(d.daughter_ids),
                "visible": places.get(d.mother_id, []),
            }
            for d in related
        ],
        "slide_divisions": sum(start_s <= d.time_s <= end_s for d in culture.divisions),
    }


def _nucleus(
    nid: int,
    s: _Seen,
    culture: Culture,
    i: int | None,
    phases: np.ndarray,
    births: Mapping[int, Division],
    divided: Mapping[int, Division],
    end_s: float,
) -> dict[str, Any]:
    """What became of one nucleus by the end of the run (`i`: its row, if alive)."""
    born = births.get(nid)
    record: dict[str, Any] = {
        "id": nid,
        "mother_id": born.mother_id if born else None,
        "born_s": round(born.time_s, 3) if born else None,
        "positions": sorted(s.positions),
        "first_seen_s": round(s.first_s, 3),
        "last_seen_s": round(s.last_s, 3),
    }
    if i is None:  # divided: the mother is gone, its daughters live on
        d = divided.get(nid)
        record.update(
            dose_mj=round(s.dose_mj, 6),
            arrested=False,
            arrested_s=None,
            dead=False,
            dead_s=None,
            divided_s=round(d.time_s, 3) if d else None,
            phase=None,
            division_due_s=None,
            division_prevented=False,
        )
        return record
    c = culture.cells
    arrested = bool(c["arrested"][i])
    dead_s = float(c["dead_s"][i])
    dead = not math.isnan(dead_s)
    phase = Phase(int(phases[i]))
    arrested_s = s.arrested_s
    if (
        arrested
        and born is not None
        and s.first_dose_mj >= culture.params.arrest_dose_mj
    ):
        arrested_s = born.time_s  # born from an arrested mother: inherited
    elif arrested and arrested_s is None:
        arrested_s = s.first_s
    # A cell stopped in interphase by arrest, or dead, would have divided when
    # its cycle ran out, counting from when its clock stopped (an estimate:
    # the arrest is timed to the exposure that passed the arrest dose).
    stopped_s: float | None = None
    if arrested and (dead or phase is Phase.INTERPHASE):
        stopped_s = arrested_s
    elif dead:
        stopped_s = dead_s
    due = (
        None
        if stopped_s is None
        else stopped_s + float(c["cycle_s"][i]) - float(c["age_s"][i])
    )
    record.update(
        dose_mj=round(float(c["dose_mj"][i]), 6),
        arrested=arrested,
        arrested_s=None if arrested_s is None else round(arrested_s, 3),
        dead=dead,
        dead_s=round(dead_s, 3) if dead else None,
        divided_s=None,
        phase=phase.label,
        division_due_s=None if due is None else round(due, 3),
        division_prevented=due is not None and due <= end_s,
    )
    return record
