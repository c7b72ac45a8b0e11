"""CSV tables that grow row by row and are flushed as they go."""

from __future__ import annotations

import csv
import threading
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence
    from pathlib import Path

__all__ = ["CsvTable"]


class CsvTable:
    """A CSV file with a fixed header; rows are written and flushed at once.

    Thread-safe. A crash loses at most the row being written.
    """

    def __init__(self, path: Path, columns: Sequence[str]) -> None:
        self.path = path
        self.columns = tuple(columns)
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file = path.open("w", newline="")
        self._writer = csv.DictWriter(self._file, fieldnames=self.columns)
        self._writer.writeheader()
        self._file.flush()
        self._lock = threading.Lock()
        self.rows = 0

    def write(self, rows: Iterable[dict[str, Any]]) -> None:
        """Append rows (unknown keys are an error) and flush, if there are any."""
        with self._lock:
            before = self.rows
            for row in rows:
                self._writer.writerow(row)
                self.rows += 1
            if self.rows > before:
                self._file.flush()

    def close(self) -> None:
        """Close the file (idempotent)."""
        with self._lock:
            if not self._file.closed:
                self._file.close()
