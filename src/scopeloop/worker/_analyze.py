"""The worker's pipeline on a recording, offline (``scopeloop analyze``).

Writes into the output folder:

- ``restored.ome.tif`` (float32) and ``labels.ome.tif`` (uint32, values are
  track ids): one TYX image series per position, readable by napari, Fiji
  (Bio-Formats) and tifffile;
- ``nuclei.csv``: ``t, position, id, y, x, area_px, mean_intensity,
  mitosis_score``;
- ``divisions.csv``: ``t, position, y, x, score, mother_id, daughter_ids``
  (daughters joined by ``;``);
- ``analysis.json``: input, models and their hashes, versions, counts.

`t` is the frame index within the position's series, y/x are pixels.
Stacks are filled in memory-mapped scratch files as the analysis goes and
converted at the end, so a long recording never has to fit in memory; an
interrupted analysis still writes the frames it finished.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import tifffile

from scopeloop.errors import ConfigError
from scopeloop.storage import CsvTable, read_recording, write_json
from scopeloop.versions import package_versions

from ._pipeline import FrameInput, Pipeline

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["AnalysisSummary", "analyze_recording"]

NUCLEI_COLUMNS = (
    "t", "position", "id", "y", "x", "area_px", "mean_intensity", "mitosis_score",
)  # fmt: skip
DIVISION_COLUMNS = ("t", "position", "y", "x", "score", "mother_id", "daughter_ids")


@dataclass(frozen=True)
class AnalysisSummary:
    """What an offline analysis produced."""

    out: Path
    frames: int
    positions: int
    nuclei: int
    divisions: int
    errors: int
    seconds: float
    finished: bool

    @property
    def frames_per_s(self) -> float:
        """Frames analysed per second."""
        return self.frames / self.seconds if self.seconds > 0 else 0.0


def analyze_recording(
    source: Path,
    out: Path,
    pipeline: Pipeline,
    *,
    batch: int = 4,
    on_frame: Callable[[int, int], None] | None = None,
) -> AnalysisSummary:
    """Run `pipeline` over every frame of `source` and write the results to `out`.

    `out` must be new or empty. `on_frame(done, total)` reports progress.
    """
    recording = read_recording(source)
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"{out}: output folder is not empty")
    out.mkdir(parents=True, exist_ok=True)
    pipeline.reset()
    total = recording.frames
    started = time.perf_counter()
    scratch: list[tuple[np.memmap, np.memmap, int]] = []
    done = errors = n_nuclei = n_divisions = 0
    finished = False
    nuclei = CsvTable(out / "nuclei.csv", NUCLEI_COLUMNS)
    divisions = CsvTable(out / "divisions.csv", DIVISION_COLUMNS)
    try:
        for series in recording.series:
            shape = (len(series), *series.frames.shape[1:])
            restored = np.lib.format.open_memmap(
                out / f".restored_p{series.position}.npy", "w+", np.float32, shape
            )
            labels = np.lib.format.open_memmap(
                out / f".labels_p{series.position}.npy", "w+", np.uint32, shape
            )
            scratch.append((restored, labels, 0))
            for start in range(0, len(series), batch):
                stop = min(start + batch, len(series))
                inputs = [
                    FrameInput(series.position, t, np.asarray(series.frames[t]), t)
                    for t in range(start, stop)
                ]
                for t, output in zip(
                    range(start, stop), pipeline.process(inputs), strict=True
                ):
                    if output.error is not None:
                        errors += 1
                    else:
                        assert output.restored is not None
                        assert output.labels is not None
                        restored[t] = output.restored
                        labels[t] = output.labels
                    nuclei.write(
                        {
                            "t": t,
                            "position": series.position,
                            "id": n.id,
                            "y": round(n.y, 2),
                            "x": round(n.x, 2),
                            "area_px": n.area_px,
                            "mean_intensity": round(n.mean_intensity, 3),
                            "mitosis_score": round(n.mitosis_score, 4),
                        }
                        for n in output.nuclei
                    )
                    divisions.write(
                        {
                            "t": t,
                            "position": series.position,
                            "y": round(d.y, 2),
                            "x": round(d.x, 2),
                            "score": round(d.score, 4),
                            "mother_id": d.mother_id,
                            "daughter_ids": ";".join(map(str, d.daughter_ids)),
                        }
                        for d in output.divisions
                    )
                    n_nuclei += len(output.nuclei)
                    n_divisions += len(output.divisions)
                    done += 1
                scratch[-1] = (restored, labels, stop)
                if on_frame is not None:
                    on_frame(done, total)
        finished = True
    finally:
        nuclei.close()
        divisions.close()
        _write_stacks(out, scratch)
        summary = AnalysisSummary(
            out=out,
            frames=done,
            positions=len(recording.series),
            nuclei=n_nuclei,
            divisions=n_divisions,
            errors=errors,
            seconds=time.perf_counter() - started,
            finished=finished,
        )
        write_json(
            out / "analysis.json",
            {
                "input": str(Path(source).resolve()),
                "finished": finished,
                "frames": done,
                "frames_in_input": total,
                "positions": [
                    {"index": s.position, "name": s.name, "frames": len(s)}
                    for s in recording.series
                ],
                "nuclei": n_nuclei,
                "divisions": n_divisions,
                "errors": errors,
                "seconds": round(summary.seconds, 3),
                "device": pipeline.device,
                "models": pipeline.models,
                "versions": package_versions(),
            },
        )
    return summary


def _write_stacks(out: Path, scratch: list[tuple[np.memmap, np.memmap, int]]) -> None:
    """Turn the scratch stacks into OME-TIFF files (frames done only)."""
    for name in ("restored", "labels"):
        with tifffile.TiffWriter(out / f"{name}.ome.tif", ome=True) as tif:
            for restored, labels, done in scratch:
                if done:
                    stack = restored if name == "restored" else labels
                    tif.write(
                        stack[:done], photometric="minisblack", metadata={"axes": "TYX"}
                    )
    for restored, labels, _ in scratch:
        for stack in (restored, labels):
            path = Path(str(stack.filename))
            del stack
            path.unlink(missing_ok=True)
