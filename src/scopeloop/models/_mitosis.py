"""Per-nucleus mitosis score from a short causal window of frames.

For every nucleus of the current frame, a square crop centred on its centroid,
with a side proportional to its size (`crop_scale` times the diameter of the
disc of the same area), is cut at the same place from the current frame and
the `window - 1` frames before it (the oldest repeated while fewer exist),
resampled to `size` x `size` and normalised over the stack. The nucleus's own
mask in the current frame is a last channel, so that the network knows which
of the nuclei in the crop it scores. A small CNN turns the stack into a logit
of P(mitosis): prophase to telophase count as mitosis, interphase and dead
nuclei do not. Looking back a few frames lets the score rise at prophase,
from condensation, before the chromosomes line up.

All crops of a frame are cut by one vectorised gather (bilinear, from a
2 x 2 average pyramid so that big nuclei are not aliased) and scored in one
forward pass.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from scopeloop.models._data import random_clip
from scopeloop.models._denoise import Denoiser
from scopeloop.models._labels import (
    RESTORED_P,
    TRAINING_INPUTS,
    restore_clips,
    training_frames,
)
from scopeloop.models._model import (
    TorchModel,
    conv_bn_relu,
    fit,
    start_training,
    training_meta,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from numpy.typing import NDArray

    from scopeloop.models._data import SimClip

__all__ = [
    "MITOTIC_PHASES",
    "CropGeometry",
    "MitosisScorer",
    "ScorerConfig",
    "clip_crops",
    "extract_crops",
    "nucleus_context",
    "nucleus_geometry",
    "roc_auc",
    "shipped_scorer_clips",
    "train_scorer",
    "train_shipped_scorer",
]

#: Phases (`scopeloop.sim.Phase` values) that count as mitosis.
MITOTIC_PHASES = (1, 2, 3, 4)
_PYRAMID_LEVELS = 4


@dataclass(frozen=True)
class ScorerConfig:
    """What rebuilds a `MitosisScorer` besides its weights (stored in the file).

    `window` frames (current included) of `size` x `size` pixels, cut with a
    side of `crop_scale` nucleus diameters but at least `min_side_px`.
    """

    window: int = 3
    size: int = 32
    crop_scale: float = 2.5
    min_side_px: float = 16.0
    widths: tuple[int, ...] = (16, 32, 64, 64)

    def as_dict(self) -> dict[str, Any]:
        """Plain values, for the model file."""
        return {
            "window": self.window,
            "size": self.size,
            "crop_scale": self.crop_scale,
            "min_side_px": self.min_side_px,
            "widths": list(self.widths),
        }


@dataclass(frozen=True)
class CropGeometry:
    """Where the crops of a frame are cut: one row per nucleus.

    `y_px`, `x_px` are centroids (row, column, pixel centres at integers) and
    `side_px` the side of each square crop, in full-resolution pixels;
    `mean_intensity` the mean grey level of each nucleus in the image given
    to `nucleus_geometry` (None without one).
    """

    ids: NDArray[np.int64]
    y_px: NDArray[np.float64]
    x_px: NDArray[np.float64]
    area_px: NDArray[np.int64]
    side_px: NDArray[np.float64]
    mean_intensity: NDArray[np.float64] | None = None


@lru_cache(maxsize=8)
def _pixel_rows_cols(h: int, w: int) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    rows = np.repeat(np.arange(h, dtype=np.float64), w)
    cols = np.tile(np.arange(w, dtype=np.float64), h)
    return rows, cols


def nucleus_geometry(
    labels: NDArray[np.integer[Any]],
    *,
    image: NDArray[Any] | None = None,
    crop_scale: float = 2.5,
    min_side_px: float = 16.0,
) -> CropGeometry:
    """Centroid, area and crop side of every nucleus of a (Y, X) label image.

    With `image` (same shape), also the mean grey level of each nucleus.
    """
    lab = np.asarray(labels)
    area = np.bincount(lab.ravel())
    ids = np.flatnonzero(area)
    ids = ids[ids > 0]
    n = area[ids].astype(np.float64)
    # Centroids and mean grey levels from every second pixel of every second
    # row (4x cheaper, within half a pixel: each sample stands for a 2 x 2
    # block, centred half a pixel down and right); nuclei too small to be seen
    # there get theirs from all pixels.
    sub = lab[::2, ::2]
    flat = sub.ravel().astype(np.intp)
    rows, cols = _pixel_rows_cols(*sub.shape)
    count = np.bincount(flat, minlength=area.size)[ids].astype(np.float64)
    seen = np.maximum(count, 1.0)
    cy = 2.0 * np.bincount(flat, weights=rows, minlength=area.size)[ids] / seen + 0.5
    cx = 2.0 * np.bincount(flat, weights=cols, minlength=area.size)[ids] / seen + 0.5
    mean = None
    if image is not None:
        img = np.asarray(image)
        weights = img[::2, ::2].astype(np.float64).ravel()
        mean = np.bincount(flat, weights=weights, minlength=area.size)[ids] / seen
    for i in np.flatnonzero(count == 0):
        yy, xx = np.nonzero(lab == ids[i])
        cy[i], cx[i] = yy.mean(), xx.mean()
        if mean is not None:
            mean[i] = float(np.asarray(image)[yy, xx].mean())
    diameter = 2.0 * np.sqrt(n / np.pi)
    side = np.maximum(crop_scale * diameter, min_side_px)
    return CropGeometry(
        ids=ids.astype(np.int64),
        y_px=cy,
        x_px=cx,
        area_px=area[ids].astype(np.int64),
        side_px=side,
        mean_intensity=mean,
    )


def _pyramid(
    frames: Sequence[NDArray[Any]], levels: int
) -> tuple[torch.Tensor, list[tuple[int, int, int]]]:
    """Frames and their 2 x 2 averages, `levels` in all, in one flat buffer.

    Returns the buffer (K, total) and, per level, (offset, height, width).
    """
    h, w = frames[0].shape
    shapes = [(h, w)]
    for _ in range(levels - 1):
        h, w = -(-h // 2), -(-w // 2)
        shapes.append((h, w))
    sizes = [hh * ww for hh, ww in shapes]
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(int)
    buf = torch.empty((len(frames), int(offsets[-1])), dtype=torch.float32)
    h, w = shapes[0]
    for i, frame in enumerate(frames):
        buf[i, : h * w] = torch.from_numpy(np.asarray(frame, np.float32).reshape(-1))
    for lv in range(1, levels):
        (ph, pw), (hh, ww) = shapes[lv - 1], shapes[lv]
        prev = buf[:, offsets[lv - 1] : offsets[lv - 1] + ph * pw].view(-1, ph, pw)
        buf[:, offsets[lv] : offsets[lv] + hh * ww] = _half(prev).reshape(-1, hh * ww)
    return buf, [(int(offsets[i]), *shapes[i]) for i in range(levels)]


def _bilinear(
    flat: torch.Tensor,
    ys: NDArray[np.float64],
    xs: NDArray[np.float64],
    offset: NDArray[np.int64],
    height: NDArray[np.int64],
    width: NDArray[np.int64],
) -> torch.Tensor:
    """Sample images stored flat (K, total) -> (K, n, S, S).

    Crop i reads the (height[i], width[i]) image that starts at offset[i] at
    rows ys[i] (S,) x columns xs[i] (S,); coordinates outside the image take
    the nearest border value.
    """
    hm, wm = (height - 1)[:, None], (width - 1)[:, None]
    ys = np.clip(ys, 0, hm)
    xs = np.clip(xs, 0, wm)
    y0 = np.minimum(np.floor(ys), np.maximum(hm - 1, 0)).astype(np.int64)
    x0 = np.minimum(np.floor(xs), np.maximum(wm - 1, 0)).astype(np.int64)
    fy = torch.from_numpy((ys - y0).astype(np.float32))[:, :, None]
    fx = torch.from_numpy((xs - x0).astype(np.float32))[:, None, :]
    y1 = np.minimum(y0 + 1, hm)
    x1 = np.minimum(x0 + 1, wm)
    rows0 = offset[:, None, None] + (y0 * width[:, None])[:, :, None]
    rows1 = offset[:, None, None] + (y1 * width[:, None])[:, :, None]
    k = flat.shape[0]
    shape = (k, *ys.shape, xs.shape[1])

    def at(rows: NDArray[np.int64], cols: NDArray[np.int64]) -> torch.Tensor:
        idx = torch.from_numpy((rows + cols[:, None, :]).reshape(-1))
        return flat.index_select(1, idx).reshape(shape)

    top = at(rows0, x0) * (1 - fx) + at(rows0, x1) * fx
    bottom = at(rows1, x0) * (1 - fx) + at(rows1, x1) * fx
    return top * (1 - fy) + bottom * fy


def _half(stack: torch.Tensor) -> torch.Tensor:
    """Average 2 x 2 blocks of (K, H, W); an odd last row or column is repeated."""
    _, h, w = stack.shape
    if h % 2 or w % 2:
        stack = F.pad(stack[None], (0, w % 2, 0, h % 2), mode="replicate")[0]
    rows = stack[:, 0::2] + stack[:, 1::2]
    return (rows[:, :, 0::2] + rows[:, :, 1::2]) * 0.25


def extract_crops(
    history: Sequence[NDArray[Any]],
    labels: NDArray[np.integer[Any]],
    *,
    window: int = 3,
    size: int = 32,
    crop_scale: float = 2.5,
    min_side_px: float = 16.0,
    geometry: CropGeometry | None = None,
) -> tuple[torch.Tensor, CropGeometry]:
    """Cut the crop stack of every nucleus of `labels` (the current frame).

    `history` holds the last images, oldest first, the current one last;
    only the last `window` are used and the oldest is repeated when there are
    fewer. Returns float32 crops (N, window + 1, size, size): `window`
    intensity channels (oldest first) normalised to zero mean and unit
    standard deviation per nucleus, then the nucleus's mask; and the geometry
    used.
    """
    lab = np.asarray(labels)
    if lab.ndim != 2 or lab.dtype.kind not in "ui":
        raise ValueError(
            f"labels must be a (Y, X) integer image, got {lab.shape} {lab.dtype}"
        )
    frames = [np.asarray(f) for f in history][-window:]
    if not frames:
        raise ValueError("history must hold at least the current frame")
    for f in frames:
        if f.shape != lab.shape:
            raise ValueError(
                f"history frames must have the labels' shape {lab.shape}, got {f.shape}"
            )
    frames = [frames[0]] * (window - len(frames)) + frames
    geo = geometry or nucleus_geometry(
        lab, image=frames[-1], crop_scale=crop_scale, min_side_px=min_side_px
    )
    n = geo.ids.size
    out = torch.empty((n, window + 1, size, size), dtype=torch.float32)
    if n == 0:
        return out, geo
    step = geo.side_px / size
    offsets = np.arange(size, dtype=np.float64) + 0.5 - size / 2
    ys = geo.y_px[:, None] + offsets[None, :] * step[:, None]
    xs = geo.x_px[:, None] + offsets[None, :] * step[:, None]
    level = np.clip(np.floor(np.log2(np.maximum(step, 1.0))), 0, _PYRAMID_LEVELS - 1)
    levels = int(level.max()) + 1
    flat, where = _pyramid(frames, levels)
    table = np.array(where, np.int64)[level.astype(np.intp)]  # (n, 3)
    scale = (2.0**level)[:, None]
    crops = _bilinear(
        flat,
        (ys + 0.5) / scale - 0.5,
        (xs + 0.5) / scale - 0.5,
        table[:, 0],
        table[:, 1],
        table[:, 2],
    )
    out[:, :window] = crops.permute(1, 0, 2, 3)
    intensity = out[:, :window].numpy()  # a view: normalised in place
    mean = intensity.mean(axis=(1, 2, 3), keepdims=True)
    std = intensity.std(axis=(1, 2, 3), keepdims=True)
    intensity -= mean
    intensity /= std + 1e-3 * np.abs(mean) + 1e-6
    h, w = lab.shape
    yi = np.clip(np.rint(ys), 0, h - 1).astype(np.intp)
    xi = np.clip(np.rint(xs), 0, w - 1).astype(np.intp)
    own = lab[yi[:, :, None], xi[:, None, :]] == geo.ids[:, None, None]
    out[:, window] = torch.from_numpy(own)
    return out, geo


def nucleus_context(
    image: NDArray[Any], labels: NDArray[np.integer[Any]], geometry: CropGeometry
) -> torch.Tensor:
    """Size and brightness of each nucleus relative to the frame's: (N, 2).

    The crops are scaled to each nucleus's size and normalised to its own
    brightness, which hides two cues to mitosis (nuclei grow before it,
    condense and brighten in it; daughters are small): these are given back
    as log(area / median area) and log(brightness / median brightness),
    brightness measured above the frame's 1st percentile.
    """
    n = geometry.ids.size
    if n == 0:
        return torch.zeros((0, 2), dtype=torch.float32)
    img = np.asarray(image)
    lo = float(np.percentile(img[::4, ::4], 1.0))
    if geometry.mean_intensity is None:
        geometry = nucleus_geometry(labels, image=img)
    assert geometry.mean_intensity is not None
    area = geometry.area_px.astype(np.float64)
    mean = np.maximum(geometry.mean_intensity - lo, 1e-3)
    rel_area = np.log(area / np.median(area))
    rel_bright = np.log(mean / max(float(np.median(mean)), 1e-3))
    return torch.from_numpy(np.stack([rel_area, rel_bright], 1).astype(np.float32))


class _ScoreNet(nn.Module):
    """A small CNN: (N, window + 1, S, S) crop stacks -> (N,) logits."""

    def __init__(self, config: ScorerConfig) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin = config.window + 1
        for i, w in enumerate(config.widths):
            layers.append(conv_bn_relu(cin, w))
            if i < len(config.widths) - 1:
                layers.append(nn.MaxPool2d(2))
            cin = w
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(
            nn.Linear(cin + 2, 32), nn.ReLU(inplace=True), nn.Linear(32, 1)
        )

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """Logit of mitosis per crop stack (N, C, S, S) and context (N, 2)."""
        features = self.features(x).mean(dim=(2, 3))
        out: torch.Tensor = self.head(torch.cat([features, context], 1))[:, 0]
        return out


class MitosisScorer(TorchModel[ScorerConfig]):
    """P(mitosis) of every nucleus of a frame, from the last few frames.

    ``scorer(history, labels)`` with `history` the last images (oldest
    first, current last) and `labels` the current frame's nucleus labels
    returns ``{label_id: score}`` for every label present.
    """

    kind = "mitosis"

    config_type = ScorerConfig
    net_type = _ScoreNet

    def __init__(
        self,
        net: _ScoreNet,
        config: ScorerConfig,
        *,
        sha256: str = "",
        path: Path | None = None,
        meta: dict[str, Any] | None = None,
        device: str | torch.device = "cpu",
    ) -> None:
        super().__init__(
            net, config, sha256=sha256, path=path, meta=meta, device=device
        )
        self.window = config.window

    def _config_dict(self) -> dict[str, Any]:
        return self.config.as_dict()

    def crops(
        self, history: Sequence[NDArray[Any]], labels: NDArray[np.integer[Any]]
    ) -> tuple[torch.Tensor, torch.Tensor, CropGeometry]:
        """The network's input for a frame: crops, context and geometry.

        See `extract_crops` and `nucleus_context`.
        """
        cfg = self.config
        crops, geo = extract_crops(
            history,
            labels,
            window=cfg.window,
            size=cfg.size,
            crop_scale=cfg.crop_scale,
            min_side_px=cfg.min_side_px,
        )
        return crops, nucleus_context(history[-1], labels, geo), geo

    def scores(self, crops: torch.Tensor, context: torch.Tensor) -> NDArray[np.float32]:
        """P(mitosis) of crop stacks (N, window + 1, S, S) with context (N, 2)."""
        if crops.shape[0] == 0:
            return np.zeros(0, np.float32)
        with torch.inference_mode():
            x = crops.to(self.device).contiguous(memory_format=torch.channels_last)
            logits = self._net(x, context.to(self.device))
        return torch.sigmoid(logits).float().cpu().numpy()

    def __call__(
        self, history: Sequence[NDArray[Any]], labels: NDArray[np.integer[Any]]
    ) -> dict[int, float]:
        """Score every nucleus of `labels`: ``{label_id: P(mitosis)}``.

        Raises ValueError when `history` is empty or its frames do not have
        the labels' shape, or when `labels` is not a 2-D integer image.
        """
        crops, context, geo = self.crops(history, labels)
        probs = self.scores(crops, context)
        return {int(i): float(p) for i, p in zip(geo.ids, probs, strict=True)}


# -- quality -------------------------------------------------------------------


def roc_auc(scores: NDArray[Any], positive: NDArray[Any]) -> float:
    """Area under the ROC curve (ties count one half); NaN without both classes."""
    s = np.asarray(scores, np.float64)
    pos = np.asarray(positive, bool)
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(s.size, np.float64)
    sorted_s = s[order]
    # Average ranks of ties.
    _, first, counts = np.unique(sorted_s, return_index=True, return_counts=True)
    avg = first + (counts + 1) / 2.0
    ranks[order] = np.repeat(avg, counts)
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


# -- training ------------------------------------------------------------------


def clip_crops(
    rng: np.random.Generator,
    clip: SimClip,
    config: ScorerConfig,
    *,
    restored: NDArray[Any] | None = None,
    restored_p: float = RESTORED_P,
) -> tuple[torch.Tensor, torch.Tensor, NDArray[np.int8]]:
    """Crops, context and phase of every nucleus of every frame of `clip`.

    The frames are rendered by `training_frames` (one kind of input for the
    whole clip; `restored`, the denoiser's output for the clip, in a fraction
    `restored_p` of the clips), the crops cut around the ground-truth labels.
    """
    images = training_frames(rng, clip, restored=restored, restored_p=restored_p)
    xs: list[torch.Tensor] = []
    cs: list[torch.Tensor] = []
    phases: list[NDArray[np.int8]] = []
    for t in range(len(clip)):
        history = list(images[max(0, t - config.window + 1) : t + 1])
        crops, geo = extract_crops(
            history,
            clip.labels[t],
            window=config.window,
            size=config.size,
            crop_scale=config.crop_scale * float(rng.uniform(0.9, 1.1)),
            min_side_px=config.min_side_px,
        )
        view = clip.nuclei[t]
        lut = dict(zip(view.ids.tolist(), view.phase.tolist(), strict=True))
        phase = np.array([lut.get(int(i), -1) for i in geo.ids], np.int8)
        known = torch.from_numpy(phase >= 0)
        xs.append(crops[known])
        cs.append(nucleus_context(images[t], clip.labels[t], geo)[known])
        phases.append(phase[phase >= 0])
    return torch.cat(xs), torch.cat(cs), np.concatenate(phases)


def train_scorer(
    clips: Sequence[SimClip],
    *,
    steps: int = 1500,
    batch_size: int = 64,
    seed: int = 0,
    lr: float = 3e-3,
    config: ScorerConfig | None = None,
    device: str | torch.device = "cpu",
    progress: Callable[[int, float], None] | None = None,
    restore: Callable[[NDArray[Any]], NDArray[Any]] | None = None,
    restored_p: float = RESTORED_P,
) -> MitosisScorer:
    """Train a `MitosisScorer` on simulated clips with ground-truth labels.

    Crops of all nuclei of all frames are cut once (`clip_crops`); each step
    draws `batch_size` of them, half mitotic when there are enough, with
    random flips and quarter turns, and now and then the history replaced by
    the current frame (as at the start of an acquisition). A fraction
    `restored_p` of the clips are seen through the denoiser (`restore`, by
    default the shipped `Denoiser`; ``restored_p=0`` for none), as the worker
    sees them. `progress(step, loss)` is called every 50 steps.
    """
    rng = start_training("train_scorer", clips, restored_p, seed)
    config = config or ScorerConfig()
    restored: list[NDArray[np.float32] | None] = [None] * len(clips)
    if restored_p > 0:
        restored = list(restore_clips(clips, restore, device))
    parts = [
        clip_crops(rng, c, config, restored=r, restored_p=restored_p)
        for c, r in zip(clips, restored, strict=True)
    ]
    x_all = torch.cat([p[0] for p in parts])
    c_all = torch.cat([p[1] for p in parts])
    phase = np.concatenate([p[2] for p in parts])
    y_all = torch.from_numpy(np.isin(phase, MITOTIC_PHASES).astype(np.float32))
    pos = np.flatnonzero(y_all.numpy() > 0.5)
    neg = np.flatnonzero(y_all.numpy() < 0.5)
    if pos.size == 0 or neg.size == 0:
        raise ValueError("train_scorer needs mitotic and non-mitotic nuclei")
    dev = torch.device(device)
    net = _ScoreNet(config).to(dev)
    k = config.window

    def batch_loss(step: int) -> torch.Tensor:
        half = batch_size // 2
        idx = np.concatenate(
            [rng.choice(pos, half), rng.choice(neg, batch_size - half)]
        )
        x = x_all[torch.from_numpy(idx)].clone()
        y = y_all[torch.from_numpy(idx)]
        no_history = torch.from_numpy(rng.uniform(size=idx.size) < 0.15)
        if k > 1 and bool(no_history.any()):
            x[no_history, : k - 1] = x[no_history, k - 1 : k]
        x = torch.rot90(x, int(rng.integers(4)), dims=(2, 3))
        if rng.uniform() < 0.5:
            x = torch.flip(x, dims=(3,))
        context = c_all[torch.from_numpy(idx)]
        logits = net(x.to(dev), context.to(dev))
        loss: torch.Tensor = F.binary_cross_entropy_with_logits(logits, y.to(dev))
        return loss

    fit(net, batch_loss, steps=steps, lr=lr, progress=progress)
    return MitosisScorer(net.cpu(), config, device=device)


def shipped_scorer_clips(
    seed: int, n_clips: int, shape: tuple[int, int] = (160, 160), frames: int = 6
) -> list[SimClip]:
    """The simulated clips `train_shipped_scorer` trains on (fixed seed).

    Every clip has a short cell cycle (many mitoses); one in two is imaged at
    an interval drawn from 30 s to 15 min, the others at the simulator's
    default spread of intervals.
    """
    rng = np.random.default_rng(seed)
    clips = []
    for i in range(n_clips):
        interval = (
            float(np.exp(rng.uniform(np.log(30), np.log(900)))) if i % 2 else None
        )
        clips.append(
            random_clip(
                rng, shape=shape, frames=frames, interval_s=interval, fast_cycle=True
            )
        )
    return clips


def train_shipped_scorer(
    out: Path,
    *,
    steps: int = 1500,
    n_clips: int = 40,
    batch_size: int = 64,
    seed: int = 0,
    device: str | torch.device = "cpu",
    progress: Callable[[int, float], None] | None = None,
) -> str:
    """Make the shipped mitosis weights: simulate clips, train, write `out`.

    A third of the clips are seen through the shipped denoiser (its sha256
    is recorded in the metadata). Reproducible for a given seed and device.
    Returns the file's sha256.
    """
    started = time.perf_counter()
    clips = shipped_scorer_clips(seed, n_clips)
    denoiser = Denoiser.load(device=device)
    scorer = train_scorer(
        clips,
        steps=steps,
        batch_size=batch_size,
        seed=seed,
        device=device,
        progress=progress,
        restore=denoiser,
    )
    meta = training_meta(
        started,
        made_by="scopeloop.models._mitosis.train_shipped_scorer",
        data=f"{n_clips} random_clip (160x160, 6 frames, fast_cycle), "
        "half at intervals of 30 s to 15 min",
        inputs=TRAINING_INPUTS,
        denoiser=denoiser.sha256,
        labels="ground truth; positive = prophase..telophase",
        steps=steps,
        batch_size=batch_size,
        seed=seed,
    )
    return scorer.save(Path(out), meta)
