"""The frame ledger: one row per acquired frame, and what became of it."""

from __future__ import annotations

import statistics
import threading
from typing import TYPE_CHECKING, Any

from scopeloop.storage import CsvTable

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    import numpy as np

    from scopeloop.protocol import ResultMessage

__all__ = ["FRAME_COLUMNS", "FrameLedger"]

FRAME_COLUMNS = (
    "index", "position", "position_name", "t", "z", "time_s", "mode", "exposure_ms",
    "laser_power_mw", "dose_mj", "stream", "reason", "worker", "latency_ms",
)  # fmt: skip
_BLANK_ROW: dict[str, Any] = dict.fromkeys(FRAME_COLUMNS, "")


class FrameLedger:
    """Frames acquired and their fate on the stream.

    `stream` is one of: ``not streamed`` (no worker address), ``queued``,
    ``sent``, ``analysed`` (a result came back), ``skipped`` (never sent: a newer
    frame of the same position replaced it, or the run ended), ``lost`` (sent,
    but its worker went away), ``error`` (the worker could not analyse it).
    Implements the stream's listener; thread-safe. `on_result` (settable until
    the first result) is handed every result after its row is updated.
    """

    def __init__(
        self,
        on_result: Callable[[ResultMessage, list[np.ndarray], float], None]
        | None = None,
    ) -> None:
        self._rows: dict[int, dict[str, Any]] = {}
        self._acquired_at: dict[int, float] = {}
        self._latencies_ms: list[float] = []
        self._lock = threading.Lock()
        self.on_result = on_result

    def add(self, index: int, row: dict[str, Any], acquired_at: float) -> None:
        """Record an acquired frame (`acquired_at`: monotonic seconds)."""
        full = _BLANK_ROW.copy()
        full.update(row)
        full["index"] = index
        with self._lock:
            self._rows[index] = full
            self._acquired_at[index] = acquired_at

    def _update(self, index: int, **values: Any) -> None:
        with self._lock:
            if index in self._rows:
                self._rows[index].update(values)

    # -- the stream's listener ----------------------------------------------

    def frame_sent(self, frame_index: int, worker_id: str, sent_at: float) -> None:
        self._update(frame_index, stream="sent", worker=worker_id)

    def frame_skipped(self, frame_index: int, reason: str) -> None:
        self._update(frame_index, stream="skipped", reason=reason)

    def frame_lost(self, frame_index: int, reason: str) -> None:
        self._update(frame_index, stream="lost", reason=reason)

    def result_received(
        self, result: ResultMessage, arrays: list[np.ndarray], received_at: float
    ) -> None:
        with self._lock:
            acquired = self._acquired_at.get(result.frame_index)
            latency = None if acquired is None else (received_at - acquired) * 1000
            if latency is not None:
                self._latencies_ms.append(latency)
            if result.frame_index in self._rows:
                self._rows[result.frame_index].update(
                    stream="error" if result.error else "analysed",
                    reason=result.error or "",
                    latency_ms="" if latency is None else round(latency, 2),
                )
        if self.on_result is not None:
            self.on_result(result, arrays, received_at)

    # -- reading ------------------------------------------------------------

    def rows(self) -> list[dict[str, Any]]:
        """Copies of every row, in acquisition order."""
        with self._lock:
            return [dict(self._rows[i]) for i in sorted(self._rows)]

    def acquired_at(self, index: int) -> float | None:
        """When frame `index` was acquired (the clock of `add`), if known."""
        with self._lock:
            return self._acquired_at.get(index)

    def counts(self) -> dict[str, int]:
        """How many frames are in each `stream` state."""
        with self._lock:
            out: dict[str, int] = {}
            for row in self._rows.values():
                out[row["stream"]] = out.get(row["stream"], 0) + 1
            return out

    def latency_ms(self, quantile: float = 0.5) -> float | None:
        """A quantile of frame-to-result latency so far, or None before any result."""
        with self._lock:
            values = list(self._latencies_ms)
        if not values:
            return None
        if len(values) == 1:
            return values[0]
        cuts = statistics.quantiles(values, n=100, method="inclusive")
        return cuts[min(98, max(0, round(quantile * 100) - 1))]

    def __len__(self) -> int:
        with self._lock:
            return len(self._rows)

    def write_csv(self, path: Path) -> int:
        """Write every row to `path`, in acquisition order; returns the count."""
        with self._lock:
            rows = [self._rows[i] for i in sorted(self._rows)]
        table = CsvTable(path, FRAME_COLUMNS)
        try:
            table.write(rows)
        finally:
            table.close()
        return len(rows)
