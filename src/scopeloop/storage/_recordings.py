"""Reading recordings back: TIFF stacks, OME-TIFF series and run folders.

A `Recording` is one (T, Y, X) stack per stage position. Accepted inputs:

- a TIFF or OME-TIFF file holding a 2-D image, a (T, Y, X) stack, or one
  such series per position (OME-TIFF with several images);
- a folder written by ``scopeloop simulate`` (``raw.ome.tiff`` or
  ``raw/raw_pNNN.ome.tiff``);
- a folder written by ``scopeloop run`` (``raw.ome.tiff`` in acquisition
  order, split per position with ``frames.csv``).

Stacks are memory-mapped where tifffile can, so long recordings are not read
into memory at once.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tifffile

from scopeloop.errors import ConfigError

__all__ = ["Recording", "Series", "read_recording"]


@dataclass(frozen=True)
class Series:
    """The frames of one stage position, oldest first."""

    position: int
    name: str
    frames: np.ndarray
    """(T, Y, X) array (possibly memory-mapped)."""
    frame_indices: tuple[int, ...] | None = None
    """Index of each frame in the run, when the recording is a run folder."""

    def __len__(self) -> int:
        return int(self.frames.shape[0])


@dataclass(frozen=True)
class Recording:
    """A recording: where it came from and one `Series` per position."""

    path: Path
    series: tuple[Series, ...]

    @property
    def frames(self) -> int:
        """Frames over all positions."""
        return sum(len(s) for s in self.series)


def read_recording(path: Path) -> Recording:
    """Open `path` (a TIFF/OME-TIFF file or a scopeloop folder) as a `Recording`.

    Raises `ConfigError` naming the path when it is missing, unreadable or
    laid out in a way that is not understood.
    """
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: no such file or folder")
    if path.is_dir():
        return _read_folder(path)
    if path.suffix.lower() not in {".tif", ".tiff"}:
        raise ConfigError(
            f"{path}: not a TIFF file (expected .tif/.tiff, an OME-TIFF, or a "
            "scopeloop run folder)"
        )
    return Recording(path, _read_tiff(path))


def _read_folder(folder: Path) -> Recording:
    raw = folder / "raw.ome.tiff"
    table = folder / "frames.csv"
    if raw.is_file() and table.is_file():
        return Recording(folder, _split_by_table(raw, table))
    if raw.is_file():
        return Recording(folder, _read_tiff(raw))
    parts = sorted((folder / "raw").glob("raw_p*.ome.tiff"))
    if parts:
        series = []
        for i, part in enumerate(parts):
            (one,) = _read_tiff(part)[:1]
            series.append(Series(i, part.name.split(".")[0][4:], one.frames))
        return Recording(folder, tuple(series))
    raise ConfigError(
        f"{folder}: not a scopeloop run folder (no raw.ome.tiff or raw/raw_p*.ome.tiff)"
    )


def _read_tiff(path: Path) -> tuple[Series, ...]:
    try:
        with tifffile.TiffFile(path) as tif:
            layouts = [(s.axes, s.shape) for s in tif.series]
    except Exception as exc:
        raise ConfigError(f"{path}: cannot read the TIFF file ({exc})") from exc
    out = []
    for i, (axes, shape) in enumerate(layouts):
        data: np.ndarray
        try:
            data = tifffile.memmap(path, series=i, mode="r")
        except ValueError:
            data = tifffile.imread(path, series=i)
        out.append(Series(i, f"p{i:03d}", _as_tyx(data, axes, shape, path)))
    if not out:
        raise ConfigError(f"{path}: the TIFF file holds no images")
    return tuple(out)


def _as_tyx(
    data: np.ndarray, axes: str, shape: tuple[int, ...], path: Path
) -> np.ndarray:
    squeezed = "".join(a for a, n in zip(axes, shape, strict=True) if n > 1)
    data = data.reshape([n for n in shape if n > 1] or [1, 1])
    if data.ndim == 2:
        return data[None]
    if data.ndim == 3 and squeezed[-2:] == "YX":
        return data
    raise ConfigError(
        f"{path}: image axes {axes!r} with shape {tuple(shape)} are not supported "
        "(expected YX or a time-lapse TYX; split channels and z first)"
    )


def _split_by_table(raw: Path, table: Path) -> tuple[Series, ...]:
    (flat,) = _read_tiff(raw)[:1]
    with table.open(newline="") as f:
        rows = list(csv.DictReader(f))
    if len(rows) < len(flat):
        raise ConfigError(
            f"{table}: lists {len(rows)} frames but {raw.name} holds {len(flat)}"
        )
    by_position: dict[int, list[int]] = {}
    names: dict[int, str] = {}
    for k, row in enumerate(rows[: len(flat)]):
        try:
            position = int(row["position"])
            z = int(row.get("z") or 0)
        except (KeyError, ValueError) as exc:
            raise ConfigError(
                f"{table}: row {k + 2} has no valid 'position'/'z' ({exc})"
            ) from exc
        if z == 0:
            by_position.setdefault(position, []).append(k)
            names[position] = row.get("position_name") or f"p{position:03d}"
    return tuple(
        Series(
            position,
            names[position],
            flat.frames[np.array(ks)],
            tuple(int(rows[k]["index"]) for k in ks),
        )
        for position, ks in sorted(by_position.items())
    )
