"""The worker's inference pipeline: denoise -> labels -> mitosis -> tracks.

Frames that arrive together are processed as a batch (grouped by shape for
the networks); each stage position keeps its own short history of restored
frames (the causal window of the mitosis score) and its own `Tracker`, so
tracks and lineage never mix between positions. A frame that cannot be
analysed (wrong dtype or shape, NaNs, a failing model) gets an output with
`error` set; nothing here raises for bad input.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import numpy as np

from scopeloop.protocol import DivisionEvent, NucleusRecord

from ._tracker import Detection, Tracker, TrackerSettings

if TYPE_CHECKING:
    from collections.abc import Sequence
    from pathlib import Path

    from numpy.typing import NDArray

__all__ = [
    "DenoiseModel",
    "FrameInput",
    "FrameOutput",
    "LabelModel",
    "MitosisModel",
    "Pipeline",
]

logger = logging.getLogger(__name__)


class DenoiseModel(Protocol):
    """Restores a batch of frames: (B, Y, X) -> float32 (B, Y, X), same scale."""

    sha256: str

    def __call__(self, frames: np.ndarray) -> np.ndarray: ...


class LabelModel(Protocol):
    """Labels nuclei in a batch of restored frames: -> uint32 (B, Y, X)."""

    sha256: str

    def __call__(self, images: np.ndarray) -> np.ndarray: ...


class MitosisModel(Protocol):
    """Scores every labelled nucleus from a causal window of restored frames."""

    sha256: str
    window: int

    def __call__(
        self, history: Sequence[np.ndarray], labels: np.ndarray
    ) -> dict[int, float]: ...


@dataclass(frozen=True, slots=True)
class FrameInput:
    """One frame to analyse, and where and when it was taken."""

    position: int
    frame_index: int
    image: np.ndarray
    t_index: int | None = None
    """Time point at this position (default: frames counted per position)."""
    z_index: int = 0
    """Plane of a z-stack; only plane 0 is tracked and scored."""


@dataclass(frozen=True, slots=True)
class FrameOutput:
    """What the pipeline found in one frame."""

    position: int
    frame_index: int
    restored: NDArray[np.float32] | None = None
    labels: NDArray[np.uint32] | None = None
    """Label image whose values are track ids (0 = background)."""
    nuclei: tuple[NucleusRecord, ...] = ()
    divisions: tuple[DivisionEvent, ...] = ()
    timings_ms: dict[str, float] = field(default_factory=dict)
    error: str | None = None


@dataclass
class _PositionState:
    tracker: Tracker
    history: deque[np.ndarray]
    frames: int = 0
    last_t: int = -1


def check_frame(image: np.ndarray) -> str | None:
    """Why `image` cannot be analysed, or None when it can."""
    if not isinstance(image, np.ndarray):
        return f"frame is a {type(image).__name__}, not an array"
    if image.ndim != 2:
        return f"frame must be 2-D (Y, X), got shape {image.shape}"
    if min(image.shape) < 8:
        return f"frame is too small to analyse: shape {image.shape}"
    if image.dtype.kind not in "uif":
        return f"frame dtype {image.dtype} is not a real number type"
    if image.dtype.kind == "f" and not np.isfinite(image).all():
        return "frame contains NaN or infinite values"
    return None


class Pipeline:
    """Denoiser, segmenter and mitosis scorer, with per-position tracking."""

    def __init__(
        self,
        denoiser: DenoiseModel | None,
        segmenter: LabelModel,
        scorer: MitosisModel,
        *,
        tracker: TrackerSettings | None = None,
        device: str = "cpu",
    ) -> None:
        self.denoiser = denoiser
        self.segmenter = segmenter
        self.scorer = scorer
        self.tracker_settings = tracker or TrackerSettings()
        self.device = device
        self._positions: dict[int, _PositionState] = {}

    @classmethod
    def load(
        cls,
        *,
        device: str = "cpu",
        denoiser: Path | bool | None = None,
        labels: Path | None = None,
        mitosis: Path | None = None,
        tracker: TrackerSettings | None = None,
    ) -> Pipeline:
        """Load the models from files (None: the shipped weights).

        `denoiser=False` skips denoising (frames go to the segmenter as they
        are).
        """
        from scopeloop.models import Denoiser, MitosisScorer, Segmenter, pick_device

        where = pick_device(device)
        return cls(
            None
            if denoiser is False
            else Denoiser.load(None if denoiser is True else denoiser, device=where),
            Segmenter.load(labels, device=where),
            MitosisScorer.load(mitosis, device=where),
            tracker=tracker,
            device=str(where),
        )

    @property
    def models(self) -> dict[str, str]:
        """Model name -> sha256 of its weights file ('' when built in memory)."""
        out = {"labels": self.segmenter.sha256, "mitosis": self.scorer.sha256}
        if self.denoiser is not None:
            out["denoiser"] = self.denoiser.sha256
        return out

    def warm_up(self, shape: tuple[int, int] = (512, 512), rounds: int = 2) -> None:
        """Run the networks on blank frames so the first real frame is not slow."""
        blank = np.zeros((1, *shape), np.float32)
        for _ in range(rounds):
            restored = blank if self.denoiser is None else self.denoiser(blank)
            labels = self.segmenter(restored)
            self.scorer([restored[0]], labels[0])

    def reset(self) -> None:
        """Forget all tracks and histories (a new run)."""
        self._positions.clear()

    def process(self, frames: Sequence[FrameInput]) -> list[FrameOutput]:
        """Analyse `frames` (oldest first); one output per frame, in order."""
        outputs: dict[int, FrameOutput] = {}
        good: list[int] = []
        for i, frame in enumerate(frames):
            problem = check_frame(frame.image)
            if problem is not None:
                outputs[i] = _failed(frame, problem)
            else:
                good.append(i)
        groups: dict[tuple[int, ...], list[int]] = {}
        for i in good:
            groups.setdefault(frames[i].image.shape, []).append(i)
        for members in groups.values():
            try:
                outputs.update(self._batch([frames[i] for i in members], members))
            except Exception as exc:
                logger.exception("analysis failed for frames %s", members)
                for i in members:
                    outputs[i] = _failed(frames[i], f"analysis failed: {exc}")
        return [outputs[i] for i in range(len(frames))]

    def _batch(
        self, frames: list[FrameInput], members: list[int]
    ) -> dict[int, FrameOutput]:
        start = time.perf_counter()
        stack = np.stack([f.image.astype(np.float32, copy=False) for f in frames])
        restored = stack if self.denoiser is None else self.denoiser(stack)
        denoised = time.perf_counter()
        labels = self.segmenter(restored)
        labelled = time.perf_counter()
        per_frame = {
            "denoise_ms": (denoised - start) * 1000 / len(frames),
            "labels_ms": (labelled - denoised) * 1000 / len(frames),
        }
        out: dict[int, FrameOutput] = {}
        for k, (i, frame) in enumerate(zip(members, frames, strict=True)):
            out[i] = self._track(frame, restored[k], labels[k], dict(per_frame))
        return out

    def _track(
        self,
        frame: FrameInput,
        restored: NDArray[np.float32],
        labels: NDArray[np.uint32],
        timings: dict[str, float],
    ) -> FrameOutput:
        t0 = time.perf_counter()
        state = self._positions.get(frame.position)
        if state is None:
            state = _PositionState(
                Tracker(self.tracker_settings),
                deque(maxlen=max(1, self.scorer.window)),
            )
            self._positions[frame.position] = state
        ids, ys, xs, areas, means = _measure(labels, restored)
        divisions: tuple[DivisionEvent, ...] = ()
        scores: dict[int, float] = {}
        tracked = frame.z_index == 0
        if tracked:
            state.history.append(restored)
            scores = self.scorer(list(state.history), labels) if ids.size else {}
        t1 = time.perf_counter()
        timings["mitosis_ms"] = (t1 - t0) * 1000
        track_of: dict[int, int] = {int(i): int(i) for i in ids}
        if tracked:
            t = frame.t_index if frame.t_index is not None else state.frames
            t = max(t, state.last_t + 1)
            state.last_t, state.frames = t, state.frames + 1
            detections = [
                Detection(int(i), float(y), float(x), float(a), scores.get(int(i), 0.0))
                for i, y, x, a in zip(ids, ys, xs, areas, strict=True)
            ]
            track_of, found = state.tracker.update(t, detections)
            divisions = tuple(
                DivisionEvent(
                    y=d.y,
                    x=d.x,
                    mother_id=d.mother_id,
                    daughter_ids=d.daughter_ids,
                    score=min(max(d.score, 0.0), 1.0),
                )
                for d in found
            )
            labels = _relabel(labels, track_of)
        nuclei = tuple(
            NucleusRecord(
                id=track_of[int(i)],
                y=float(y),
                x=float(x),
                area_px=int(a),
                mean_intensity=float(m),
                mitosis_score=min(max(scores.get(int(i), 0.0), 0.0), 1.0),
            )
            for i, y, x, a, m in zip(ids, ys, xs, areas, means, strict=True)
        )
        timings["track_ms"] = (time.perf_counter() - t1) * 1000
        return FrameOutput(
            position=frame.position,
            frame_index=frame.frame_index,
            restored=np.ascontiguousarray(restored, np.float32),
            labels=labels,
            nuclei=nuclei,
            divisions=divisions,
            timings_ms=timings,
        )


def _failed(frame: FrameInput, reason: str) -> FrameOutput:
    return FrameOutput(
        position=frame.position, frame_index=frame.frame_index, error=reason
    )


def _measure(
    labels: NDArray[np.uint32], image: NDArray[np.float32]
) -> tuple[
    NDArray[np.int64],
    NDArray[np.float64],
    NDArray[np.float64],
    NDArray[np.float64],
    NDArray[np.float64],
]:
    """Ids, centroid rows and columns, areas and mean intensities of the labels."""
    n = int(labels.max(initial=0))
    if n == 0:
        empty = np.zeros(0)
        return np.zeros(0, np.int64), empty, empty, empty, empty
    flat = labels.ravel().astype(np.int64)
    area = np.bincount(flat, minlength=n + 1)
    ids = (np.flatnonzero(area[1:]) + 1).astype(np.int64)
    rows, cols = np.indices(labels.shape)
    sy = np.bincount(flat, rows.ravel(), minlength=n + 1)
    sx = np.bincount(flat, cols.ravel(), minlength=n + 1)
    si = np.bincount(flat, image.ravel().astype(np.float64), minlength=n + 1)
    a = area[ids].astype(np.float64)
    return ids, sy[ids] / a, sx[ids] / a, a, si[ids] / a


def _relabel(labels: NDArray[np.uint32], mapping: dict[int, int]) -> NDArray[np.uint32]:
    if not mapping:
        return labels
    lut = np.zeros(int(labels.max(initial=0)) + 1, np.uint32)
    for old, new in mapping.items():
        lut[old] = new
    return lut[labels]
