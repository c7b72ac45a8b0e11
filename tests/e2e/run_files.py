"""Reading what a simulated run wrote: raw OME-TIFF, label stacks and CSV tables."""

from __future__ import annotations

import csv
from typing import TYPE_CHECKING

import tifffile

if TYPE_CHECKING:
    from pathlib import Path

    import numpy as np


def raw_files(out: Path) -> list[Path]:
    """The raw OME-TIFF files of a run: one per position under raw/, or one file."""
    folder = out / "raw"
    if folder.is_dir():
        return sorted(folder.glob("*.ome.tif*"))
    return sorted(out.glob("raw*.ome.tif*"))


def read_raw(out: Path, position: int) -> np.ndarray:
    """Raw frames of one position: (T, Y, X) or (T, Z, Y, X)."""
    files = raw_files(out)
    if len(files) > 1:  # one file per position
        with tifffile.TiffFile(files[position]) as tf:
            return tf.series[0].asarray()
    with tifffile.TiffFile(files[0]) as tf:  # one series per position
        return tf.series[position].asarray()


def read_labels(out: Path, position: int) -> np.ndarray:
    return tifffile.imread(
        out / "ground_truth" / "labels" / f"labels_p{position:03d}.ome.tiff"
    )


def read_table(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        rows = list(reader)
        return list(reader.fieldnames or []), rows
