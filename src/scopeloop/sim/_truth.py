"""Ground truth of a simulated acquisition: tables and label images on disk."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import tifffile

from ._culture import Phase, wrapped_offset
from ._render import render_labels

if TYPE_CHECKING:
    from collections.abc import Sequence
    from pathlib import Path

    from ._culture import Division
    from ._world import Exposure

__all__ = ["AcquiredFrame", "division_rows", "write_ground_truth"]

NUCLEI_COLUMNS = ("frame", "position", "id", "y", "x", "phase", "dose_mj", "sim_time_s")
DIVISION_COLUMNS = (
    "frame",
    "position",
    "y",
    "x",
    "sim_time_s",
    "mother_id",
    "daughter_ids",
)
FRAME_COLUMNS = (
    "index",
    "frame",
    "position",
    "z",
    "sim_time_s",
    "stage_x_um",
    "stage_y_um",
    "focus_um",
    "exposure_ms",
    "laser_power_mw",
    "dose_mj",
)


@dataclass(frozen=True, slots=True)
class AcquiredFrame:
    """An acquired frame: its place in the acquisition and the exposure behind it."""

    frame: int
    position: int
    z: int
    exposure: Exposure


def _first_plane_per_frame(frames: Sequence[AcquiredFrame]) -> list[AcquiredFrame]:
    seen: set[tuple[int, int]] = set()
    out = []
    for f in frames:
        if (f.frame, f.position) not in seen:
            seen.add((f.frame, f.position))
            out.append(f)
    return out


def _pixel_of(
    exposure: Exposure, x_um: float, y_um: float, slide: tuple[float, float]
) -> tuple[float, float]:
    w, h = slide
    dx = wrapped_offset(x_um, exposure.stage_x_um, w)
    dy = wrapped_offset(y_um, exposure.stage_y_um, h)
    rows, cols = exposure.shape
    return (
        dy / exposure.pixel_um + rows / 2 - 0.5,
        dx / exposure.pixel_um + cols / 2 - 0.5,
    )


def _daughter_in_image(exposure: Exposure, division: Division) -> bool:
    view, (h, w) = exposure.nuclei, exposure.shape
    mine = np.isin(view.ids, division.daughter_ids)
    ys, xs = view.y_px[mine], view.x_px[mine]
    return bool(np.any((ys >= 0) & (ys < h) & (xs >= 0) & (xs < w)))


def division_rows(
    frames: Sequence[AcquiredFrame],
    divisions: Sequence[Division],
    slide: tuple[float, float],
) -> list[dict[str, object]]:
    """One row per division seen: the first frame of a position showing the daughters.

    A division counts at a position when it happened after that position's
    previous frame, no later than this frame, and its place or the centre of
    one of its daughters is in the image (so every daughter listed in
    `nuclei.csv` has its division here, even at the border; `y`, `x` may then
    lie just outside the image).
    """
    rows: list[dict[str, object]] = []
    per_position: dict[int, list[AcquiredFrame]] = {}
    for f in _first_plane_per_frame(frames):
        per_position.setdefault(f.position, []).append(f)
    for position, stack in sorted(per_position.items()):
        times = np.array([f.exposure.time_s for f in stack])
        for d in divisions:
            k = int(np.searchsorted(times, d.time_s, side="left"))
            if k == 0 or k >= len(stack):
                continue  # before the first frame, or after the last one
            f = stack[k]
            y, x = _pixel_of(f.exposure, d.x_um, d.y_um, slide)
            h, w = f.exposure.shape
            if not ((0 <= y < h and 0 <= x < w) or _daughter_in_image(f.exposure, d)):
                continue
            rows.append(
                {
                    "frame": f.frame,
                    "position": position,
                    "y": round(y, 2),
                    "x": round(x, 2),
                    "sim_time_s": round(d.time_s, 3),
                    "mother_id": d.mother_id,
                    "daughter_ids": ";".join(map(str, d.daughter_ids)),
                }
            )
    rows.sort(key=lambda r: (int(str(r["frame"])), int(str(r["position"]))))
    return rows


def _write_csv(
    path: Path, columns: Sequence[str], rows: Sequence[dict[str, object]]
) -> None:
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def frame_row(f: AcquiredFrame) -> dict[str, object]:
    """One row of ground_truth/frames.csv: where, when and with what light."""
    return {
        "index": f.exposure.index,
        "frame": f.frame,
        "position": f.position,
        "z": f.z,
        "sim_time_s": round(f.exposure.time_s, 3),
        "stage_x_um": f.exposure.stage_x_um,
        "stage_y_um": f.exposure.stage_y_um,
        "focus_um": f.exposure.focus_um,
        "exposure_ms": f.exposure.exposure_ms,
        "laser_power_mw": f.exposure.laser_power_mw,
        "dose_mj": round(f.exposure.dose_mj, 6),
    }


def write_ground_truth(
    folder: Path,
    frames: Sequence[AcquiredFrame],
    divisions: Sequence[Division],
    slide: tuple[float, float],
) -> dict[str, int]:
    """Write `frames.csv`, `nuclei.csv`, `divisions.csv` and label images.

    Labels go to `labels/labels_p<NNN>.ome.tiff`, one TYX stack per position,
    aligned with the raw frames (the culture is flat, so one label image serves
    every plane of a z-stack). Returns counts of what was written.
    """
    folder.mkdir(parents=True, exist_ok=True)
    _write_csv(
        folder / "frames.csv",
        FRAME_COLUMNS,
        [frame_row(f) for f in frames],
    )
    nuclei_rows: list[dict[str, object]] = []
    labels: dict[int, list[np.ndarray]] = {}
    for f in _first_plane_per_frame(frames):
        view, (h, w) = f.exposure.nuclei, f.exposure.shape
        inside = (view.y_px >= 0) & (view.y_px < h) & (view.x_px >= 0) & (view.x_px < w)
        for k in np.flatnonzero(inside):
            nuclei_rows.append(
                {
                    "frame": f.frame,
                    "position": f.position,
                    "id": int(view.ids[k]),
                    "y": round(float(view.y_px[k]), 2),
                    "x": round(float(view.x_px[k]), 2),
                    "phase": Phase(int(view.phase[k])).label,
                    "dose_mj": round(float(view.dose_mj[k]), 6),
                    "sim_time_s": round(f.exposure.time_s, 3),
                }
            )
        labels.setdefault(f.position, []).append(render_labels(view, f.exposure.shape))
    _write_csv(folder / "nuclei.csv", NUCLEI_COLUMNS, nuclei_rows)
    division_table = division_rows(frames, divisions, slide)
    _write_csv(folder / "divisions.csv", DIVISION_COLUMNS, division_table)
    label_dir = folder / "labels"
    label_dir.mkdir(exist_ok=True)
    pixel_um = frames[0].exposure.pixel_um if frames else 1.0
    for position, stack in labels.items():
        tifffile.imwrite(
            label_dir / f"labels_p{position:03d}.ome.tiff",
            np.stack(stack),
            ome=True,
            compression="zlib",
            metadata={
                "axes": "TYX",
                "PhysicalSizeX": pixel_um,
                "PhysicalSizeY": pixel_um,
                "PhysicalSizeXUnit": "µm",
                "PhysicalSizeYUnit": "µm",
            },
        )
    return {"nuclei_rows": len(nuclei_rows), "divisions": len(division_table)}
