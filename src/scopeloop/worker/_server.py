"""The worker's loop: receive frames, analyse them in batches, send results.

The worker connects to a controller (which binds), says hello with its
credits and the hashes of its models, and then answers every frame it
receives with exactly one result: the analysis, or an error saying why the
frame could not be analysed. Frames that are waiting when a batch starts go
into the same batch (up to `max_batch`). The controller may not be there yet,
may restart, or may go away: `FrameClient` reconnects, and the worker keeps
its tracks (a controller restart is a new run only if `reset` is called).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from scopeloop.protocol import ArraySpec, FrameClient, ResultMessage

from ._pipeline import FrameInput, FrameOutput, Pipeline

if TYPE_CHECKING:
    from collections.abc import Callable

    import numpy as np

    from scopeloop.protocol import FrameMessage

__all__ = ["WorkerStats", "serve"]

logger = logging.getLogger(__name__)


@dataclass
class WorkerStats:
    """What a worker has done so far."""

    frames: int = 0
    errors: int = 0
    batches: int = 0
    divisions: int = 0
    busy_s: float = 0.0
    started: float = field(default_factory=time.monotonic)

    @property
    def frames_per_s(self) -> float:
        """Frames answered per second of wall time since the start."""
        elapsed = time.monotonic() - self.started
        return self.frames / elapsed if elapsed > 0 else 0.0


def serve(
    address: str,
    pipeline: Pipeline,
    *,
    worker_id: str | None = None,
    credits: int = 2,
    max_batch: int = 4,
    send_images: bool = True,
    stop: threading.Event | None = None,
    max_frames: int | None = None,
    idle_exit_s: float | None = None,
    on_batch: Callable[[WorkerStats, list[FrameOutput]], None] | None = None,
) -> WorkerStats:
    """Serve frames from the controller at `address` until told to stop.

    Stops when `stop` is set, after `max_frames` frames, or after
    `idle_exit_s` seconds without a frame. Returns the final statistics.
    """
    stop = stop or threading.Event()
    client = FrameClient(
        address,
        worker_id,
        credits=credits,
        device=pipeline.device,
        models={k: v or "in-memory" for k, v in pipeline.models.items()},
    )
    stats = WorkerStats()
    last_frame = time.monotonic()
    try:
        while not stop.is_set():
            first = client.receive(timeout_s=0.2)
            if first is None:
                if idle_exit_s is not None and (
                    time.monotonic() - last_frame > idle_exit_s
                ):
                    break
                continue
            batch = [first]
            while len(batch) < max_batch:
                more = client.receive(timeout_s=0.0)
                if more is None:
                    break
                batch.append(more)
            started = time.perf_counter()
            outputs = pipeline.process([_input(h, image) for h, image in batch])
            for output in outputs:
                _send(client, output, send_images)
            stats.busy_s += time.perf_counter() - started
            stats.frames += len(outputs)
            stats.batches += 1
            stats.errors += sum(o.error is not None for o in outputs)
            stats.divisions += sum(len(o.divisions) for o in outputs)
            last_frame = time.monotonic()
            if on_batch is not None:
                on_batch(stats, outputs)
            if max_frames is not None and stats.frames >= max_frames:
                break
    finally:
        client.close()
    return stats


def _input(header: FrameMessage, image: np.ndarray) -> FrameInput:
    return FrameInput(
        position=header.position,
        frame_index=header.frame_index,
        image=image,
        t_index=header.t_index,
        z_index=header.z_index,
    )


def _send(client: FrameClient, output: FrameOutput, send_images: bool) -> None:
    arrays: list[np.ndarray] = []
    specs: list[ArraySpec] = []
    if send_images and output.error is None:
        for name, array in (("restored", output.restored), ("labels", output.labels)):
            if array is not None:
                arrays.append(array)
                specs.append(ArraySpec.of(name, array))
    result = ResultMessage(
        frame_index=output.frame_index,
        position=output.position,
        worker_id=client.worker_id,
        timings_ms=output.timings_ms,
        nuclei=output.nuclei,
        divisions=output.divisions,
        error=None if output.error is None else output.error[:2000],
        buffers=tuple(specs),
    )
    client.send_result(result, arrays)
