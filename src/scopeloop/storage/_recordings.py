"""Reading recordings back: TIFF stacks, OME-TIFF series, OME-Zarr and run folders.

A `Recording` is one (T, Y, X) stack per stage position. Accepted inputs:

- a TIFF or OME-TIFF file holding a 2-D image, a (T, Y, X) stack, or one
  such series per position (OME-TIFF with several images); a (T, C, Y, X)
  stack when a channel is chosen (``channel=``);
- an OME-Zarr (``*.zarr`` folder: one multiscale image, or a
  ``bioformats2raw`` layout with one image per position), read with
  tensorstore;
- a folder written by ``scopeloop simulate`` (``raw.ome.tiff``,
  ``raw/raw_pNNN.ome.tiff`` or ``raw.ome.zarr``);
- a folder written by ``scopeloop run`` (``raw.ome.tiff`` in acquisition
  order, split per position with ``frames.csv``).

Stacks are memory-mapped where tifffile can, so long recordings are not read
into memory at once (compressed TIFFs and OME-Zarr are read whole). Where the
file says so, the recording also gives its frame interval (OME
``TimeIncrement``/``DeltaT``, the OME-Zarr time scale, ``frames.csv``) and each
position's stage coordinates (OME ``PositionX/Y``).
"""

from __future__ import annotations

import csv
import itertools
import json
import math
import statistics
import xml.etree.ElementTree as ET
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

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
    stage_um: tuple[float, float] | None = None
    """Stage (x, y) of the position in micrometres, when the file records it."""

    def __len__(self) -> int:
        return int(self.frames.shape[0])


@dataclass(frozen=True)
class Recording:
    """A recording: where it came from and one `Series` per position."""

    path: Path
    series: tuple[Series, ...]
    frame_interval_s: float | None = None
    """Time between frames of one position, when the file records it."""

    @property
    def frames(self) -> int:
        """Frames over all positions."""
        return sum(len(s) for s in self.series)


def read_recording(path: Path, *, channel: int | None = None) -> Recording:
    """Open `path` (a TIFF/OME-TIFF file, an OME-Zarr or a scopeloop folder).

    Parameters
    ----------
    path
        The recording.
    channel
        Channel to keep from a recording with a channel axis (TCYX); a
        recording with channels and no choice is refused.

    Raises `ConfigError` naming the path when it is missing, unreadable or
    laid out in a way that is not understood.

    """
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: no such file or folder")
    if path.is_dir():
        if _is_zarr(path):
            return _read_zarr(path, channel)
        return _read_folder(path, channel)
    if path.suffix.lower() not in {".tif", ".tiff"}:
        raise ConfigError(
            f"{path}: not a TIFF file (expected .tif/.tiff, an OME-TIFF, an "
            "OME-Zarr folder, or a scopeloop run folder)"
        )
    series, interval = _read_tiff(path, channel)
    return Recording(path, series, interval)


def _read_folder(folder: Path, channel: int | None) -> Recording:
    raw = folder / "raw.ome.tiff"
    table = folder / "frames.csv"
    if raw.is_file() and table.is_file():
        series, _ = _read_tiff(raw, channel)
        return Recording(folder, *_split_by_table(series[0], raw, table))
    if raw.is_file():
        return Recording(folder, *_read_tiff(raw, channel))
    if _is_zarr(folder / "raw.ome.zarr"):
        return replace(_read_zarr(folder / "raw.ome.zarr", channel), path=folder)
    parts = sorted((folder / "raw").glob("raw_p*.ome.tiff"))
    if parts:
        out = []
        intervals = []
        for i, part in enumerate(parts):
            read, interval = _read_tiff(part, channel)
            intervals.append(interval)
            name = part.name.split(".")[0][4:]
            out.append(replace(read[0], position=i, name=name))
        return Recording(folder, tuple(out), intervals[0])
    raise ConfigError(
        f"{folder}: not a scopeloop run folder (no raw.ome.tiff, raw.ome.zarr or "
        "raw/raw_p*.ome.tiff)"
    )


def _read_tiff(
    path: Path, channel: int | None
) -> tuple[tuple[Series, ...], float | None]:
    try:
        with tifffile.TiffFile(path) as tif:
            layouts = [(s.axes, s.shape) for s in tif.series]
            ome = tif.ome_metadata
    except Exception as exc:
        raise ConfigError(f"{path}: cannot read the TIFF file ({exc})") from exc
    images = _ome_images(ome, path) if ome else []
    out = []
    for i, (axes, shape) in enumerate(layouts):
        data: np.ndarray
        try:
            data = tifffile.memmap(path, series=i, mode="r")
        except ValueError:
            data = tifffile.imread(path, series=i)
        stage = images[i][1] if i < len(images) else None
        frames = _as_tyx(data, axes, shape, path, channel)
        out.append(Series(i, f"p{i:03d}", frames, stage_um=stage))
    if not out:
        raise ConfigError(f"{path}: the TIFF file holds no images")
    interval = images[0][0] if images else None
    return tuple(out), interval


def _ome_images(
    xml: str, path: Path
) -> list[tuple[float | None, tuple[float, float] | None]]:
    """Per OME image: the frame interval and the stage (x, y), where recorded."""
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as exc:
        raise ConfigError(f"{path}: the OME-XML cannot be parsed ({exc})") from exc
    out: list[tuple[float | None, tuple[float, float] | None]] = []
    for image in (e for e in root.iter() if e.tag.endswith("}Image")):
        pixels = next((e for e in image if e.tag.endswith("}Pixels")), None)
        if pixels is None:
            out.append((None, None))
            continue
        planes = [e for e in pixels if e.tag.endswith("}Plane")]
        interval = _positive(pixels.get("TimeIncrement"))
        times = sorted(
            {
                (int(p.get("TheT", 0)), float(t))
                for p in planes
                if (t := p.get("DeltaT")) is not None
            }
        )
        if interval is None and len(times) > 1:
            steps = [
                (b - a) / (tb - ta)
                for (ta, a), (tb, b) in itertools.pairwise(times)
                if tb > ta
            ]
            interval = _positive(statistics.median(steps)) if steps else None
        stage = None
        if planes and planes[0].get("PositionX") and planes[0].get("PositionY"):
            stage = (
                float(planes[0].get("PositionX", 0)),
                float(planes[0].get("PositionY", 0)),
            )
        out.append((interval, stage))
    return out


def _positive(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) and number > 0 else None


def _as_tyx(
    data: np.ndarray,
    axes: str,
    shape: tuple[int, ...],
    path: Path,
    channel: int | None = None,
) -> np.ndarray:
    if "C" in axes:
        c_axis = axes.index("C")
        channels = shape[c_axis]
        if channels > 1 and channel is None:
            raise ConfigError(
                f"{path}: image axes {axes!r} with shape {tuple(shape)} hold "
                f"{channels} channels: choose one"
            )
        which = channel or 0
        if not 0 <= which < channels:
            raise ConfigError(
                f"{path}: channel {which} is out of range (the recording has "
                f"{channels} channel(s), 0..{channels - 1})"
            )
        data = data.reshape(shape)[(slice(None),) * c_axis + (which,)]
        axes = axes[:c_axis] + axes[c_axis + 1 :]
        shape = shape[:c_axis] + shape[c_axis + 1 :]
    elif channel:
        raise ConfigError(
            f"{path}: channel {channel} is out of range (the recording has one "
            "channel, 0)"
        )
    squeezed = "".join(a for a, n in zip(axes, shape, strict=True) if n > 1)
    data = data.reshape([n for n in shape if n > 1] or [1, 1])
    if data.ndim == 2:
        return data[None]
    if data.ndim == 3 and squeezed[-2:] == "YX" and squeezed[0] not in "ZS":
        return data
    raise ConfigError(
        f"{path}: image axes {axes!r} with shape {tuple(shape)} are not supported "
        "(expected YX, a time-lapse TYX, or TCYX with a channel chosen; split "
        "z-stacks and samples first)"
    )


# -- OME-Zarr ------------------------------------------------------------------


def _is_zarr(path: Path) -> bool:
    return path.is_dir() and (
        (path / "zarr.json").is_file() or (path / ".zattrs").is_file()
    )


def _zarr_attrs(group: Path) -> dict[str, Any]:
    try:
        if (group / "zarr.json").is_file():
            meta = json.loads((group / "zarr.json").read_text())
            attrs = meta.get("attributes", {})
        else:
            attrs = json.loads((group / ".zattrs").read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{group}: cannot read the Zarr metadata ({exc})") from exc
    if not isinstance(attrs, dict):
        raise ConfigError(f"{group}: the Zarr attributes are not an object")
    ome = attrs.get("ome", attrs)  # OME-Zarr 0.5 nests under "ome"
    return {**attrs, **ome} if isinstance(ome, dict) else attrs


def _read_zarr(path: Path, channel: int | None) -> Recording:
    try:
        import tensorstore as ts
    except ImportError:
        raise ConfigError(
            f"{path}: reading OME-Zarr needs tensorstore (pip install tensorstore)"
        ) from None
    attrs = _zarr_attrs(path)
    if "multiscales" in attrs:
        groups = [(path, "p000")]
    elif (path / "OME").is_dir() and "series" in (meta := _zarr_attrs(path / "OME")):
        groups = [(path / str(name), str(name)) for name in meta["series"]]
    else:
        raise ConfigError(
            f"{path}: not an OME-Zarr image (no 'multiscales', and no "
            "bioformats2raw 'OME/series' list)"
        )
    series = []
    interval = None
    for i, (group, name) in enumerate(groups):
        image = _zarr_attrs(group)
        try:
            (scale, *_) = image["multiscales"]
            axes = "".join(
                a if isinstance(a, str) else a["name"] for a in scale["axes"]
            ).upper()
            dataset = scale["datasets"][0]
        except (KeyError, ValueError, TypeError, IndexError) as exc:
            raise ConfigError(
                f"{group}: the OME-Zarr 'multiscales' metadata is not understood "
                f"({type(exc).__name__}: {exc})"
            ) from exc
        array_path = group / dataset["path"]
        driver = "zarr3" if (array_path / "zarr.json").is_file() else "zarr"
        try:
            store = ts.open(
                {
                    "driver": driver,
                    "kvstore": {"driver": "file", "path": str(array_path)},
                },
                read=True,
            ).result()
            data = np.asarray(store.read().result())
        except Exception as exc:
            raise ConfigError(
                f"{array_path}: cannot read the Zarr array ({exc})"
            ) from exc
        if i == 0 and "T" in axes:
            transforms = dataset.get("coordinateTransformations", [])
            scales = [t.get("scale") for t in transforms if t.get("type") == "scale"]
            if scales and scales[0]:
                interval = _positive(scales[0][axes.index("T")])
        frames = _as_tyx(data, axes, tuple(data.shape), group, channel)
        series.append(Series(i, name, frames, stage_um=_zarr_stage(image)))
    return Recording(path, tuple(series), interval)


def _zarr_stage(attrs: dict[str, Any]) -> tuple[float, float] | None:
    """Stage (x, y) of an image written by ome-writers, from its frame metadata."""
    frames = attrs.get("ome_writers", {}).get("frame_metadata") or [{}]
    first = frames[0] if isinstance(frames[0], dict) else {}
    x, y = first.get("position_x"), first.get("position_y")
    if isinstance(x, int | float) and isinstance(y, int | float):
        return float(x), float(y)
    return None


# -- scopeloop run folders -----------------------------------------------------


def _split_by_table(
    flat: Series, raw: Path, table: Path
) -> tuple[tuple[Series, ...], float | None]:
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
    series = tuple(
        Series(
            position,
            names[position],
            flat.frames[np.array(ks)],
            tuple(int(rows[k]["index"]) for k in ks),
        )
        for position, ks in sorted(by_position.items())
    )
    interval = None
    if by_position:
        first = min(by_position)
        try:
            times = [float(rows[k]["time_s"]) for k in by_position[first]]
        except (KeyError, ValueError):
            times = []
        steps = [b - a for a, b in itertools.pairwise(times)]
        interval = _positive(statistics.median(steps)) if steps else None
    return series, interval
