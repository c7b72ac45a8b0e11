"""Nucleus labels: a U-Net at half resolution, then a seeded watershed.

The network sees the image normalised by robust percentiles (any grey scale:
8-bit real data, 16-bit simulated frames) and averaged 2 x 2, and predicts two
maps: the probability that a pixel is inside a nucleus, and a distance to the
nucleus border normalised to 1 at each nucleus's centre (0 where two nuclei
touch). Nucleus cores (smoothed normalised distance above 0.3) seed a
watershed of the distance map inside the hole-filled foreground, which
separates touching nuclei; the labels are then brought back to full
resolution and small objects are dropped.

Nuclei are 6 to 50 pixels across, so half resolution loses little and makes
the network four times cheaper: about 13 ms for the network and 8 ms for the
watershed per 512 x 512 frame on one busy CPU core. Recordings with bigger
nuclei (GOWT1 at 1024 x 1024, ~55 px) do better with ``downsample=4``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage as ndi
from skimage.segmentation import watershed
from torch import nn

from scopeloop.models._data import random_clip
from scopeloop.models._denoise import Denoiser
from scopeloop.models._model import (
    TorchModel,
    conv_bn_relu,
    fit,
    fold_batchnorm,
    start_training,
    training_meta,
)
from scopeloop.models._unet import pad_to_multiple

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from numpy.typing import NDArray

    from scopeloop.models._data import SimClip

__all__ = [
    "RESTORED_P",
    "TRAINING_INPUTS",
    "Segmenter",
    "SegmenterConfig",
    "average_precision",
    "fold_batchnorm",
    "labels_from_maps",
    "normalise_image",
    "restore_clips",
    "shipped_segmenter_clips",
    "train_segmenter",
    "train_shipped_segmenter",
    "training_frames",
    "training_image",
]

_PERCENTILES = (1.0, 99.8)

#: Share of training inputs that are the denoiser's output (see `training_frames`).
RESTORED_P = 1.0 / 3.0

#: What `training_frames` feeds the models, as the shipped weights' meta says.
TRAINING_INPUTS = (
    "shipped denoiser's output (1/3) / noisy / clean+noise / "
    "smoothed noisy, some quantised"
)


@dataclass(frozen=True)
class SegmenterConfig:
    """What rebuilds a `Segmenter` besides its weights (stored in the file).

    `downsample` is the factor the image is averaged by before the network;
    `fg_threshold` is the foreground probability above which a pixel belongs
    to a nucleus, `seed_threshold` the normalised distance above which it is a
    nucleus core (one seed per core), after smoothing the distance map by a
    gaussian of `smooth_px` (reduced-resolution pixels); objects smaller than
    `min_area_px` full-resolution pixels are dropped.
    """

    widths: tuple[int, ...] = (8, 16, 32, 64)
    downsample: int = 2
    fg_threshold: float = 0.5
    seed_threshold: float = 0.3
    smooth_px: float = 1.0
    min_area_px: int = 12

    @property
    def multiple(self) -> int:
        """Height and width the network needs them to be multiples of."""
        return int(self.downsample * 2 ** (len(self.widths) - 1))

    def as_dict(self) -> dict[str, Any]:
        """Plain values, for the model file."""
        return {
            "widths": list(self.widths),
            "downsample": self.downsample,
            "fg_threshold": self.fg_threshold,
            "seed_threshold": self.seed_threshold,
            "smooth_px": self.smooth_px,
            "min_area_px": self.min_area_px,
        }


class _SegNet(nn.Module):
    """Average `downsample` x `downsample`, then a light U-Net with two maps.

    A U-Net whose skips are added rather than concatenated, with one
    convolution per decoder level: about four times cheaper than `UNet` of
    the same widths, for the same receptive field.
    """

    def __init__(self, config: SegmenterConfig) -> None:
        super().__init__()
        widths = list(config.widths)
        self.downsample = config.downsample
        self.multiple = config.multiple
        self.encoder = nn.ModuleList()
        cin = 1
        for w in widths:
            self.encoder.append(nn.Sequential(conv_bn_relu(cin, w), conv_bn_relu(w, w)))
            cin = w
        self.reduce = nn.ModuleList(
            nn.Conv2d(widths[i + 1], widths[i], 1) for i in range(len(widths) - 1)
        )
        self.decoder = nn.ModuleList(conv_bn_relu(w, w) for w in widths[:-1])
        self.head = nn.Conv2d(widths[0], 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map normalised (N, 1, H, W) to logits (N, 2, H/d, W/d).

        H and W must be multiples of `multiple`.
        """
        if self.downsample > 1:
            x = F.avg_pool2d(x, self.downsample)
        skips = []
        for i, block in enumerate(self.encoder):
            if i:
                x = F.max_pool2d(x, 2)
            x = block(x)
            skips.append(x)
        for i in reversed(range(len(self.decoder))):
            x = F.interpolate(
                self.reduce[i](x),
                scale_factor=2.0,
                mode="bilinear",
                align_corners=False,
            )
            x = self.decoder[i](x + skips[i])
        out: torch.Tensor = self.head(x)
        return out


def normalise_image(image: NDArray[Any]) -> NDArray[np.float32]:
    """Map robust percentiles (1, 99.8) of `image` (Y, X) to 0 and 1.

    The percentiles are taken on every second pixel of every second row,
    which is as good for images of nuclei and four times cheaper.
    """
    img = np.asarray(image, dtype=np.float32)
    lo, hi = np.percentile(img[::2, ::2], _PERCENTILES)
    return (img - np.float32(lo)) / np.float32(max(float(hi - lo), 1e-6))


def labels_from_maps(
    foreground: NDArray[np.floating[Any]],
    distance: NDArray[np.floating[Any]],
    *,
    fg_threshold: float = 0.5,
    seed_threshold: float = 0.5,
    smooth_px: float = 0.0,
    orphan_fraction: float = 0.25,
) -> NDArray[np.int32]:
    """Seeded watershed of a normalised distance map inside the foreground.

    `foreground` is the probability of nucleus (Y, X), `distance` the
    distance to the border normalised to 1 at nucleus centres. Each connected
    core (``distance > seed_threshold``) seeds one nucleus; foreground
    components without a core become a nucleus of their own when at least
    `orphan_fraction` of the median seeded nucleus's area. Holes in the
    foreground (nucleoli) are filled; with `smooth_px` the distance map is
    smoothed by a gaussian first, which merges the several cores that a big
    textured nucleus may show. Returns int32 labels 1..n (0 = background), in
    no particular order.
    """
    mask = ndi.binary_fill_holes(foreground > fg_threshold)
    if smooth_px > 0:
        distance = ndi.gaussian_filter(distance, smooth_px)
    found = ndi.label(mask & (distance > seed_threshold))
    markers: NDArray[np.int32] = np.asarray(found[0], np.int32)
    n = int(found[1])
    if n == 0 and not mask.any():
        return markers
    labels: NDArray[np.int32] = np.asarray(
        watershed(-distance, markers, mask=mask),  # type: ignore[no-untyped-call]
        np.int32,
    )
    orphans = mask & (labels == 0)
    if orphans.any():
        extra = np.asarray(ndi.label(orphans)[0], np.int32)
        # Foreground without a core: a nucleus of its own only if about as
        # big as the seeded ones (small ones are noise and halo fragments).
        area = np.bincount(extra.ravel())
        seeded = np.bincount(labels.ravel())[1:]
        seeded = seeded[seeded > 0]
        smallest = orphan_fraction * float(np.median(seeded)) if seeded.size else 0.0
        keep = area >= smallest
        keep[0] = False
        lut = np.zeros(area.size, np.int32)
        lut[keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.int32) + n
        labels[orphans] = lut[extra[orphans]]
    return labels


def _drop_small_and_relabel(
    labels: NDArray[np.integer[Any]], min_area: int
) -> NDArray[np.uint32]:
    """Remove objects under `min_area` pixels; number the rest 1..n."""
    flat = labels.ravel()
    area = np.bincount(flat)
    keep = area >= min_area
    keep[0] = False
    lut = np.zeros(area.size, np.uint32)
    lut[keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.uint32)
    out: NDArray[np.uint32] = lut[labels]
    return out


class Segmenter(TorchModel[SegmenterConfig]):
    """Labels the nuclei in images: (B, Y, X) or (Y, X) -> uint32 labels.

    Load the shipped weights with ``Segmenter.load()`` or a trained file with
    ``Segmenter.load(path)``.
    """

    kind = "labels"

    config_type = SegmenterConfig
    net_type = _SegNet

    def _config_dict(self) -> dict[str, Any]:
        return self.config.as_dict()

    def maps(self, images: NDArray[Any]) -> tuple[NDArray[Any], NDArray[Any]]:
        """Foreground probability and normalised distance, at reduced size.

        `images` is (B, Y, X); the maps are (B, Y', X') with Y' = ceil(Y / d).
        """
        batch = np.stack([normalise_image(im) for im in images])
        x = torch.from_numpy(batch)[:, None].to(self.device)
        x, (h, w) = pad_to_multiple(x, self.config.multiple)
        x = x.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            out = torch.sigmoid(self._net(x)).float().cpu().numpy()
        d = self.config.downsample
        hh, ww = -(-h // d), -(-w // d)
        return out[:, 0, :hh, :ww], out[:, 1, :hh, :ww]

    def __call__(self, images: NDArray[Any]) -> NDArray[np.uint32]:
        """Label the nuclei of (B, Y, X) or (Y, X) images.

        Returns uint32 labels of the same shape: 0 on background, 1..n in each
        image. Raises ValueError for other shapes or non-numeric images.
        """
        arr = np.asarray(images)
        if arr.ndim not in (2, 3) or arr.size == 0:
            raise ValueError(
                f"images must be (Y, X) or (B, Y, X) and not empty, got {arr.shape}"
            )
        if arr.dtype.kind not in "uif":
            raise ValueError(f"images must be numeric, got dtype {arr.dtype}")
        single = arr.ndim == 2
        batch = arr[None] if single else arr
        h, w = batch.shape[1:]
        fg, dist = self.maps(batch)
        cfg = self.config
        d = cfg.downsample
        out = np.empty(batch.shape, np.uint32)
        for i in range(batch.shape[0]):
            small = labels_from_maps(
                fg[i],
                dist[i],
                fg_threshold=cfg.fg_threshold,
                seed_threshold=cfg.seed_threshold,
                smooth_px=cfg.smooth_px,
            )
            full = small.repeat(d, 0).repeat(d, 1)[:h, :w] if d > 1 else small
            out[i] = _drop_small_and_relabel(full, cfg.min_area_px)
        return out[0] if single else out


# -- quality -------------------------------------------------------------------


def average_precision(
    pred: NDArray[np.integer[Any]], truth: NDArray[np.integer[Any]], iou: float = 0.5
) -> float:
    """Instance-segmentation average precision at one IoU threshold.

    Objects are matched one to one when their IoU is at least `iou` (for
    ``iou >= 0.5`` such a match is unique); returns TP / (TP + FP + FN), the
    measure of the Cell Tracking / Data Science Bowl challenges. Two empty
    label images score 1. `pred` and `truth` are label images of the same
    shape (0 = background); several images may be stacked.
    """
    pred = np.asarray(pred)
    truth = np.asarray(truth)
    if pred.shape != truth.shape:
        raise ValueError(f"shapes differ: {pred.shape} and {truth.shape}")
    tp, n_pred, n_true = _match_counts(pred, truth, iou)
    denom = n_pred + n_true - tp
    return 1.0 if denom == 0 else tp / denom


def _match_counts(
    pred: NDArray[Any], truth: NDArray[Any], iou: float
) -> tuple[int, int, int]:
    """(matched pairs, predicted objects, true objects) at IoU >= `iou`."""
    p_ids, p = np.unique(pred.ravel(), return_inverse=True)
    t_ids, t = np.unique(truth.ravel(), return_inverse=True)
    n_p, n_t = p_ids.size, t_ids.size
    inter = np.bincount(p * n_t + t, minlength=n_p * n_t).reshape(n_p, n_t)
    p_fg = p_ids != 0
    t_fg = t_ids != 0
    inter = inter[p_fg][:, t_fg]
    area_p = np.bincount(p, minlength=n_p)[p_fg]
    area_t = np.bincount(t, minlength=n_t)[t_fg]
    union = area_p[:, None] + area_t[None, :] - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        scores = np.where(union > 0, inter / np.maximum(union, 1), 0.0)
    matched = scores >= iou
    if iou < 0.5:
        # Greedy one-to-one matching by decreasing IoU.
        pairs = np.argwhere(matched)
        order = np.argsort(-scores[matched])
        used_p: set[int] = set()
        used_t: set[int] = set()
        tp = 0
        for i, j in pairs[order]:
            if i in used_p or j in used_t:
                continue
            used_p.add(int(i))
            used_t.add(int(j))
            tp += 1
    else:
        tp = int(matched.sum())
    return tp, int(p_fg.sum()), int(t_fg.sum())


# -- training ------------------------------------------------------------------


def training_image(
    rng: np.random.Generator,
    clip: SimClip,
    t: int,
    *,
    restored: NDArray[Any] | None = None,
    restored_p: float = RESTORED_P,
) -> NDArray[np.float32]:
    """Frame `t` of `clip` as the models may see it at run time.

    See `training_frames`, of which this is one frame; `restored`, when
    given, is the denoiser's output for the whole clip.
    """
    out: NDArray[np.float32] = training_frames(
        rng, clip, slice(t, t + 1), restored=restored, restored_p=restored_p
    )[0]
    return out


def restore_clips(
    clips: Sequence[SimClip],
    restore: Callable[[NDArray[Any]], NDArray[Any]] | None = None,
    device: str | torch.device = "cpu",
) -> list[NDArray[np.float32]]:
    """The denoiser's output (T, Y, X) for the noisy frames of every clip.

    `restore` maps (T, Y, X) frames to restored frames on the same grey
    scale; None: the shipped `Denoiser` on `device`.
    """
    if restore is None:
        restore = Denoiser.load(device=device)
    return [np.asarray(restore(c.noisy), np.float32) for c in clips]


def training_frames(
    rng: np.random.Generator,
    clip: SimClip,
    frames: slice | None = None,
    *,
    restored: NDArray[Any] | None = None,
    restored_p: float = RESTORED_P,
) -> NDArray[np.float32]:
    """Frames of `clip` (T, Y, X) as the models may see them at run time.

    The worker feeds the models the denoiser's output (or the raw frames
    with ``--no-denoise``, or another denoiser's), so training mixes: with
    `restored` (the shipped denoiser's output for the whole clip, see
    `restore_clips`), that output in a fraction `restored_p` of the draws;
    otherwise the raw noisy frames; the noise-free frames with a little
    noise; the noisy frames smoothed by a gaussian (in proportions 35 : 35 :
    30). Now and then the result is quantised to a few grey levels, as in
    dim 8-bit recordings. One draw applies to all the frames.
    """
    sl = frames if frames is not None else slice(None)
    noisy = clip.noisy[sl].astype(np.float32)
    choice = rng.uniform()
    if restored is not None and choice < restored_p:
        img = np.asarray(restored[sl], np.float32)
    else:
        if restored is not None:
            choice = (choice - restored_p) / (1.0 - restored_p)
        if choice < 0.35:
            img = noisy
        elif choice < 0.7:
            clean = clip.clean[sl]
            span = float(np.percentile(clean, 99.5) - np.percentile(clean, 1))
            sigma = rng.uniform(0.0, 0.08) * max(span, 1e-3)
            img = (clean + rng.normal(0.0, sigma, clean.shape)).astype(np.float32)
        else:
            sigma = float(rng.uniform(0.7, 2.0))
            img = ndi.gaussian_filter(noisy, (0.0, sigma, sigma))
    if rng.uniform() < 0.15:
        lo, hi = np.percentile(img, (0.5, 99.9))
        levels = float(rng.uniform(20, 255))
        img = np.round(np.clip((img - lo) / max(hi - lo, 1e-6), 0, 1.2) * levels)
    out: NDArray[np.float32] = img.astype(np.float32, copy=False)
    return out


def _targets(labels: NDArray[np.integer[Any]]) -> tuple[NDArray[Any], NDArray[Any]]:
    """Foreground and normalised distance to the border of every nucleus."""
    lab = np.asarray(labels)
    border = np.zeros(lab.shape, bool)
    border[:-1] |= lab[:-1] != lab[1:]
    border[1:] |= lab[:-1] != lab[1:]
    border[:, :-1] |= lab[:, :-1] != lab[:, 1:]
    border[:, 1:] |= lab[:, :-1] != lab[:, 1:]
    inside = (lab > 0) & ~border
    dist = ndi.distance_transform_edt(inside).astype(np.float32)
    n = int(lab.max())
    if n:
        peak = ndi.maximum(dist, lab, index=np.arange(n + 1))
        peak = np.maximum(np.asarray(peak, np.float32), 1.0)
        dist = dist / peak[lab]
    return (lab > 0).astype(np.float32), dist


def train_segmenter(
    clips: Sequence[SimClip],
    *,
    steps: int = 1500,
    batch_size: int = 8,
    patch: int = 128,
    seed: int = 0,
    lr: float = 3e-3,
    zoom_p: float = 0.3,
    config: SegmenterConfig | None = None,
    device: str | torch.device = "cpu",
    progress: Callable[[int, float], None] | None = None,
    restore: Callable[[NDArray[Any]], NDArray[Any]] | None = None,
    restored_p: float = RESTORED_P,
) -> Segmenter:
    """Train a `Segmenter` on simulated clips with their ground-truth labels.

    Each step draws `batch_size` random `patch` x `patch` crops (full
    resolution; clips smaller than `patch` are used whole, so they must share
    one size then) from random frames, rendered by `training_image`, with
    random flips and quarter turns. A fraction `zoom_p` of the crops are
    enlarged 1.2 to 2.5 times, for nuclei bigger than the simulator draws
    (such as the 50-pixel nuclei of 1024 x 1024 recordings). A fraction
    `restored_p` of the crops are cut from the denoiser's output (`restore`,
    by default the shipped `Denoiser`; ``restored_p=0`` for none), which is
    what the worker labels. `progress(step, loss)` is called every 50 steps.
    """
    rng = start_training("train_segmenter", clips, restored_p, seed)
    config = config or SegmenterConfig()
    dev = torch.device(device)
    net = _SegNet(config).to(dev)
    multiple = net.multiple
    frames = [(c, t) for c in clips for t in range(len(c))]
    targets = {(id(c), t): _targets(c.labels[t]) for c, t in frames}
    restored: dict[int, NDArray[np.float32] | None] = {id(c): None for c in clips}
    if restored_p > 0:
        restored = dict(
            zip(
                (id(c) for c in clips),
                restore_clips(clips, restore, device),
                strict=True,
            )
        )
    d = config.downsample

    def batch_loss(step: int) -> torch.Tensor:
        xs, ts = [], []
        for _ in range(batch_size):
            clip, t = frames[int(rng.integers(len(frames)))]
            h, w = clip.labels.shape[1:]
            ph = min(patch, h) // multiple * multiple
            pw = min(patch, w) // multiple * multiple
            zoom = float(rng.uniform(1.2, 2.5)) if rng.uniform() < zoom_p else 1.0
            sh, sw = max(int(ph / zoom), 8), max(int(pw / zoom), 8)
            y0 = int(rng.integers(0, h - sh + 1))
            x0 = int(rng.integers(0, w - sw + 1))
            sl = np.s_[y0 : y0 + sh, x0 : x0 + sw]
            img = training_image(
                rng, clip, t, restored=restored[id(clip)], restored_p=restored_p
            )[sl]
            if zoom == 1.0:
                fg, dist = targets[(id(clip), t)]
                fg, dist = fg[sl], dist[sl]
            else:
                factors = (ph / sh, pw / sw)
                img = ndi.zoom(img, factors, order=1, grid_mode=True, mode="nearest")
                lab = ndi.zoom(
                    clip.labels[t][sl], factors, order=0, grid_mode=True, mode="nearest"
                )
                fg, dist = _targets(lab)
            stack = np.stack([normalise_image(img), fg, dist])
            k = int(rng.integers(4))
            stack = np.rot90(stack, k, axes=(1, 2))
            if rng.uniform() < 0.5:
                stack = stack[:, :, ::-1]
            xs.append(stack[:1])
            ts.append(stack[1:])
        x = torch.from_numpy(np.ascontiguousarray(np.stack(xs))).to(dev)
        target = torch.from_numpy(np.ascontiguousarray(np.stack(ts))).to(dev)
        if d > 1:
            target = F.avg_pool2d(target, d)
        logits = net(x)
        loss: torch.Tensor = F.binary_cross_entropy_with_logits(
            logits[:, 0], target[:, 0]
        ) + 2.0 * F.binary_cross_entropy_with_logits(logits[:, 1], target[:, 1])
        return loss

    fit(net, batch_loss, steps=steps, lr=lr, progress=progress)
    return Segmenter(net.cpu(), config, device=device)


def shipped_segmenter_clips(
    seed: int, n_clips: int, shape: tuple[int, int] = (192, 192), frames: int = 2
) -> list[SimClip]:
    """The simulated clips `train_shipped_segmenter` trains on (fixed seed)."""
    rng = np.random.default_rng(seed)
    return [
        random_clip(rng, shape=shape, frames=frames, fast_cycle=bool(i % 2))
        for i in range(n_clips)
    ]


def train_shipped_segmenter(
    out: Path,
    *,
    steps: int = 1500,
    n_clips: int = 48,
    batch_size: int = 8,
    patch: int = 192,
    seed: int = 0,
    device: str | torch.device = "cpu",
    progress: Callable[[int, float], None] | None = None,
) -> str:
    """Make the shipped labels weights: simulate clips, train, write `out`.

    A third of the training inputs are the shipped denoiser's output (its
    sha256 is recorded in the file's metadata), so the weights go with that
    denoiser. Reproducible for a given seed and device (clips and training both draw
    from `seed`). Returns the file's sha256.
    """
    started = time.perf_counter()
    clips = shipped_segmenter_clips(seed, n_clips)
    denoiser = Denoiser.load(device=device)
    denoiser_sha = denoiser.sha256
    seg = train_segmenter(
        clips,
        steps=steps,
        batch_size=batch_size,
        patch=patch,
        seed=seed,
        device=device,
        progress=progress,
        restore=denoiser,
    )
    meta = training_meta(
        started,
        made_by="scopeloop.models._labels.train_shipped_segmenter",
        data=f"{n_clips} random_clip (192x192, 2 frames), fast_cycle alternating",
        inputs=TRAINING_INPUTS,
        denoiser=denoiser_sha,
        steps=steps,
        batch_size=batch_size,
        patch=patch,
        seed=seed,
    )
    return seg.save(Path(out), meta)
