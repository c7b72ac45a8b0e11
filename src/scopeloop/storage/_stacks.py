"""Growing image stacks on disk (one TYX series per position) via ome-writers."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

import numpy as np
from ome_writers import AcquisitionSettings, Dimension, OMEStream, create_stream

if TYPE_CHECKING:
    from pathlib import Path

__all__ = ["StackWriter"]

_STORABLE = (np.uint8, np.uint16, np.uint32)


class StackWriter:
    """Appends 2-D frames to `<folder>/<prefix>_<position>.ome.tiff` files.

    One file per position, opened on its first frame, with an open-ended time
    axis. Floating-point frames are rounded to 16-bit grey levels (OME-TIFF
    through ome-writers stores integers). Thread-safe.
    """

    def __init__(self, folder: Path, prefix: str, pixel_size_um: float | None) -> None:
        self.folder = folder
        self.prefix = prefix
        self.pixel_size_um = pixel_size_um or None
        self._streams: dict[str, OMEStream] = {}
        self._counts: dict[str, int] = {}
        self._lock = threading.Lock()

    def append(self, position_name: str, frame: np.ndarray) -> int:
        """Append `frame`; returns its index in that position's stack."""
        if frame.dtype.type not in _STORABLE:
            frame = np.clip(np.rint(frame), 0, 65535).astype(np.uint16)
        with self._lock:
            stream = self._streams.get(position_name)
            if stream is None:
                stream = self._open(position_name, frame)
            stream.append(frame)
            index = self._counts.get(position_name, 0)
            self._counts[position_name] = index + 1
        return index

    def _open(self, position_name: str, frame: np.ndarray) -> OMEStream:
        self.folder.mkdir(parents=True, exist_ok=True)
        h, w = frame.shape
        spatial = (
            {"scale": self.pixel_size_um, "unit": "micrometer"}
            if self.pixel_size_um
            else {}
        )
        settings = AcquisitionSettings(
            root_path=str(self.folder / f"{self.prefix}_{position_name}.ome.tiff"),
            dimensions=[
                Dimension(name="t", count=None, chunk_size=1, type="time"),
                Dimension(name="y", count=h, chunk_size=h, **spatial),
                Dimension(name="x", count=w, chunk_size=w, **spatial),
            ],
            dtype=frame.dtype.name,
        )
        stream = create_stream(settings)
        self._streams[position_name] = stream
        return stream

    def close(self) -> None:
        """Close every file (idempotent)."""
        with self._lock:
            for stream in self._streams.values():
                stream.close()
            self._streams.clear()
