"""Result intake: the thread that takes worker results in and writes them down."""

from __future__ import annotations

import logging
import queue
import threading
from typing import TYPE_CHECKING

from scopeloop.storage import CsvTable, StackWriter

if TYPE_CHECKING:
    from pathlib import Path

    import numpy as np

    from scopeloop.protocol import ResultMessage

__all__ = ["ResultIntake"]

logger = logging.getLogger("scopeloop.controller")

NUCLEI_COLUMNS = (
    "frame_index", "position", "id", "y", "x", "area_px", "mean_intensity",
    "mitosis_score",
)  # fmt: skip
DIVISION_COLUMNS = (
    "frame_index", "position", "y", "x", "mother_id", "daughter_ids", "score",
)  # fmt: skip

IMAGE_COLUMNS = ("frame_index", "position", "image", "stack_index")

_STOP = object()


class ResultIntake:
    """Takes results from the stream and writes them into the run folder.

    Results arrive on the stream's I/O thread; `put` only queues them, and this
    object's own thread writes `results/nuclei.csv`, `results/divisions.csv`
    and the restored and label images (`results/restored/`, `results/labels/`,
    one stack per position; `results/images.csv` says which frame each stack
    entry belongs to). The newest result of each position is kept for
    the event source (`latest`).
    """

    def __init__(
        self, folder: Path, position_names: list[str], pixel_size_um: float | None
    ) -> None:
        self.folder = folder
        self._names = position_names
        self._nuclei = CsvTable(folder / "nuclei.csv", NUCLEI_COLUMNS)
        self._divisions = CsvTable(folder / "divisions.csv", DIVISION_COLUMNS)
        self._images = CsvTable(folder / "images.csv", IMAGE_COLUMNS)
        self._stacks = {
            name: StackWriter(folder / name, name, pixel_size_um)
            for name in ("restored", "labels")
        }
        self._latest: dict[int, ResultMessage] = {}
        self._lock = threading.Lock()
        self._queue: queue.Queue[object] = queue.Queue()
        self.written = 0
        self.failed = 0
        self._thread = threading.Thread(
            target=self._run, name="scopeloop-intake", daemon=True
        )
        self._thread.start()

    def put(
        self, result: ResultMessage, arrays: list[np.ndarray], received_at: float
    ) -> None:
        """Queue a result (called from the stream's thread; never blocks).

        A result with nothing to write is only kept as the newest of its
        position, without waking the intake thread.
        """
        if result.nuclei or result.divisions or result.buffers:
            self._queue.put((result, arrays))
            return
        with self._lock:
            self._latest[result.position] = result
            self.written += 1

    def latest(self, position: int) -> ResultMessage | None:
        """The newest result of a position, if any."""
        with self._lock:
            return self._latest.get(position)

    def _run(self) -> None:
        while (item := self._queue.get()) is not _STOP:
            result: ResultMessage
            arrays: list[np.ndarray]
            result, arrays = item  # type: ignore[misc]
            try:
                self._write(result, arrays)
                with self._lock:
                    self.written += 1
            except Exception:  # a bad result must not stop the intake
                self.failed += 1
                logger.exception(
                    "cannot write the result of frame %d", result.frame_index
                )

    def _write(self, result: ResultMessage, arrays: list[np.ndarray]) -> None:
        with self._lock:
            self._latest[result.position] = result
        name = (
            self._names[result.position]
            if result.position < len(self._names)
            else f"p{result.position:03d}"
        )
        self._nuclei.write(
            {
                "frame_index": result.frame_index,
                "position": result.position,
                "id": n.id,
                "y": n.y,
                "x": n.x,
                "area_px": n.area_px,
                "mean_intensity": n.mean_intensity,
                "mitosis_score": n.mitosis_score,
            }
            for n in result.nuclei
        )
        self._divisions.write(
            {
                "frame_index": result.frame_index,
                "position": result.position,
                "y": d.y,
                "x": d.x,
                "mother_id": d.mother_id,
                "daughter_ids": ";".join(map(str, d.daughter_ids)),
                "score": d.score,
            }
            for d in result.divisions
        )
        self._images.write(
            {
                "frame_index": result.frame_index,
                "position": result.position,
                "image": spec.name,
                "stack_index": self._stacks[spec.name].append(name, array),
            }
            for spec, array in zip(result.buffers, arrays, strict=True)
        )

    def close(self) -> None:
        """Write what is queued, then close every file."""
        self._queue.put(_STOP)
        self._thread.join()
        self._nuclei.close()
        self._divisions.close()
        self._images.close()
        for stack in self._stacks.values():
            stack.close()
