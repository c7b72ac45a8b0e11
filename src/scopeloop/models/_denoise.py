"""Self-supervised denoising in the Noise2Void 2 manner.

Training needs noisy frames only (Krull et al., 2019; Hoeck et al., 2022):
random patches, flipped and rotated at random, have a few pixels (about 0.4%)
replaced by the median of their 5x5 neighbourhood *without* the pixel itself,
and the network learns to predict the original value there. The noise of a
pixel is independent of its neighbours', so the best such prediction is the
clean value. The loss counts the masked pixels only.

The network is the N2V2 U-Net (`UNet` with max-blur pooling and no skip at
the top level) working on a space-to-depth view of the frame: every 2x2 block
of pixels becomes four channels at half resolution (`pixel_unshuffle`), and
the output is folded back (`pixel_shuffle`). That takes the costly
full-resolution convolutions away (a 512x512 frame in about 20-30 ms on two
CPU cores, against about 350 ms for the plain U-Net of the same width) while
the blind-spot training stays as it is: it masks input pixels and does not
depend on the architecture.

Every frame is normalised on its own (minus its mean, over its standard
deviation) and the output is put back on the input's grey scale, so one model
serves 8-bit and 16-bit cameras, with or without offset.
"""

from __future__ import annotations

import copy
import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from torch import nn

from scopeloop.errors import ConfigError
from scopeloop.models._model import TorchModel
from scopeloop.models._unet import UNet, pad_to_multiple
from scopeloop.models._weights import shipped_model_path

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from numpy.typing import NDArray

    from scopeloop.models._weights import ModelFile

__all__ = [
    "DenoiseNet",
    "Denoiser",
    "DenoiserConfig",
    "n2v_mask",
    "train_denoiser",
    "train_shipped_denoiser",
]

_EPS = 1e-6


class DenoiserConfig(BaseModel):
    """Architecture and pre-processing of a denoiser, stored in its model file."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    version: int = Field(1, ge=1, le=1, description="Version of this schema.")
    base: int = Field(
        16, ge=1, le=256, description="Channels at the top level of the U-Net."
    )
    depth: int = Field(2, ge=1, le=6, description="Poolings in the U-Net.")
    space_to_depth: int = Field(
        2,
        ge=1,
        le=4,
        description="Side of the pixel blocks folded into channels before the "
        "U-Net (1: the U-Net sees full resolution).",
    )
    norm: bool = Field(
        False,
        description="Batch normalisation in the U-Net (folded into the "
        "convolutions for inference).",
    )
    normalisation: str = Field(
        "mean-std",
        pattern="^mean-std$",
        description="Per-frame input normalisation, undone on the output.",
    )

    @property
    def multiple(self) -> int:
        """Height and width the network needs them to be multiples of."""
        return int(self.space_to_depth * 2**self.depth)


class DenoiseNet(nn.Module):
    """The N2V2 U-Net on a space-to-depth view of (N, 1, H, W) frames."""

    def __init__(self, config: DenoiserConfig) -> None:
        super().__init__()
        self.factor = config.space_to_depth
        channels = self.factor**2
        self.unet = UNet(
            channels,
            channels,
            base=config.base,
            depth=config.depth,
            blurpool=True,
            top_skip=False,
            norm=config.norm,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map normalised (N, 1, H, W) to (N, 1, H, W); H, W multiples of `multiple`."""
        if self.factor > 1:
            x = F.pixel_unshuffle(x, self.factor)
        out: torch.Tensor = self.unet(x)
        if self.factor > 1:
            out = F.pixel_shuffle(out, self.factor)
        return out


def _check_frames(frames: Any) -> NDArray[Any]:
    """Validate frames for the denoiser; returns them as an array (2-D or 3-D)."""
    arr = np.asarray(frames)
    if arr.dtype == np.bool_ or not (
        np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)
    ):
        raise ValueError(f"denoiser input must be real numbers, got dtype {arr.dtype}")
    if arr.ndim not in (2, 3):
        raise ValueError(
            f"denoiser input must be (Y, X) or (B, Y, X), got shape {arr.shape}"
        )
    if arr.size == 0:
        raise ValueError(f"denoiser input is empty (shape {arr.shape})")
    if np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
        raise ValueError("denoiser input holds NaN or infinite values")
    return arr


def _normalise(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-frame (x - mean) / std of (N, 1, H, W); returns it, mean and std."""
    mean = x.mean(dim=(-2, -1), keepdim=True)
    std = x.std(dim=(-2, -1), keepdim=True).clamp_min(_EPS)
    return (x - mean) / std, mean, std


class Denoiser(TorchModel[DenoiserConfig]):
    """A trained denoiser: frames in, restored frames out on the same grey scale.

    Build one with `Denoiser.load` (a model file, by default the shipped one) or
    `train_denoiser`. Calling it runs inference on `device` without gradients.
    """

    kind = "denoiser"

    def __init__(
        self,
        config: DenoiserConfig,
        net: DenoiseNet,
        *,
        device: str | torch.device = "cpu",
        path: Path | None = None,
        sha256: str = "",
        meta: dict[str, Any] | None = None,
        batch_size: int = 8,
    ) -> None:
        super().__init__(
            net.cpu(), config, sha256=sha256, path=path, meta=meta, device=device
        )
        self.batch_size = batch_size

    @property
    def net(self) -> DenoiseNet:
        """The trained network (on the CPU), which `save` writes."""
        net: DenoiseNet = self._train_net  # type: ignore[assignment]
        return net

    @classmethod
    def _from_file(cls, model: ModelFile, device: str | torch.device) -> Self:
        """Rebuild from a read file.

        Raises `ConfigError` naming the file when its configuration or
        weights do not fit this denoiser.
        """
        path = model.path
        try:
            config = DenoiserConfig.model_validate(model.config)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(map(str, e['loc'])) or 'config'}: {e['msg']} "
                f"(got {e.get('input')!r})"
                for e in exc.errors()
            )
            raise ConfigError(
                f"{path}: bad denoiser configuration: {problems}"
            ) from exc
        net = DenoiseNet(config)
        try:
            net.load_state_dict(model.state_dict)
        except RuntimeError as exc:
            raise ConfigError(f"{path}: weights do not fit the model: {exc}") from exc
        return cls(
            config, net, device=device, path=path, sha256=model.sha256, meta=model.meta
        )

    def _config_dict(self) -> dict[str, Any]:
        return self.config.model_dump()

    def save(self, path: Path, meta: dict[str, Any] | None = None) -> str:
        """Write a model file (kind 'denoiser'); returns and keeps its sha256.

        `meta` is added to (and kept in) the denoiser's own `meta`.
        """
        merged = {**self.meta, **(meta or {})}
        sha = super().save(path, merged)
        self.meta = merged
        return sha

    def __call__(self, frames: NDArray[Any]) -> NDArray[np.float32]:
        """Denoise (Y, X) or (B, Y, X) frames of any real dtype.

        Returns float32 of the same shape on the input's grey scale. Raises
        `ValueError` for NaN/inf, empty input or another number of dimensions.
        """
        arr = _check_frames(frames)
        single = arr.ndim == 2
        stack = arr[None] if single else arr
        out = np.empty(stack.shape, np.float32)
        with torch.inference_mode():
            for start in range(0, stack.shape[0], self.batch_size):
                chunk = np.ascontiguousarray(
                    stack[start : start + self.batch_size], dtype=np.float32
                )
                out[start : start + len(chunk)] = self._run(chunk)
        return out[0] if single else out

    def _run(self, chunk: NDArray[np.float32]) -> NDArray[np.float32]:
        x = torch.from_numpy(chunk)[:, None].to(self.device)
        x, mean, std = _normalise(x)
        x, (h, w) = pad_to_multiple(x, self.config.multiple)
        x = x.contiguous(memory_format=torch.channels_last)
        y = self._net(x)[..., :h, :w]
        y = y * std + mean
        result: NDArray[np.float32] = y[:, 0].float().cpu().numpy()
        return result


# --- training -----------------------------------------------------------------


def _neighbourhood_offsets(radius: int) -> NDArray[np.int64]:
    """(dy, dx) of a (2r+1)^2 neighbourhood without its centre, shape (K, 2)."""
    d = np.arange(-radius, radius + 1)
    dy, dx = np.meshgrid(d, d, indexing="ij")
    keep = (dy != 0) | (dx != 0)
    return np.stack([dy[keep], dx[keep]], axis=1)


def _reflect(index: NDArray[np.int64], size: int) -> NDArray[np.int64]:
    """Reflect indices into [0, size) like ``mode="reflect"`` padding does."""
    index = np.abs(index)
    return np.where(index >= size, 2 * (size - 1) - index, index)


def n2v_mask(
    patches: torch.Tensor,
    rng: np.random.Generator,
    *,
    span: int = 16,
    radius: int = 2,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Blind-spot corruption of (N, 1, H, W) patches, N2V2 style.

    One pixel at random in every `span` x `span` cell (1/span^2 of the pixels)
    is replaced by the median of its (2 radius + 1)^2 neighbourhood without the
    pixel itself (reflected at the patch border, where a neighbour that
    reflects onto the pixel is left out too). Returns the corrupted copy
    and the boolean mask of the replaced pixels.
    """
    n, _, h, w = patches.shape
    if min(h, w) <= radius:
        raise ValueError(f"patches of {h}x{w} are too small for radius {radius}")
    cy = np.arange(0, h, span)
    cx = np.arange(0, w, span)
    gy, gx = np.meshgrid(cy, cx, indexing="ij")
    cells = gy.size
    ys = gy.ravel()[None] + rng.integers(0, span, size=(n, cells))
    xs = gx.ravel()[None] + rng.integers(0, span, size=(n, cells))
    inside = (ys < h) & (xs < w)
    bi = np.broadcast_to(np.arange(n)[:, None], ys.shape)[inside]
    ys, xs = ys[inside], xs[inside]
    off = _neighbourhood_offsets(radius)
    yy = _reflect(ys[:, None] + off[None, :, 0], h)
    xx = _reflect(xs[:, None] + off[None, :, 1], w)
    # Near the border a reflected neighbour can be the pixel itself: leave it out.
    itself = torch.from_numpy((yy == ys[:, None]) & (xx == xs[:, None]))
    rows, cols = torch.from_numpy(yy), torch.from_numpy(xx)
    values = patches[torch.from_numpy(bi[:, None]), 0, rows, cols]
    values = values.masked_fill(itself, float("nan")).nanmedian(dim=1).values
    out = patches.clone()
    mask = torch.zeros_like(patches, dtype=torch.bool)
    ti, ty, tx = torch.from_numpy(bi), torch.from_numpy(ys), torch.from_numpy(xs)
    out[ti, 0, ty, tx] = values
    mask[ti, 0, ty, tx] = True
    return out, mask


def _as_frame_list(frames: Sequence[NDArray[Any]] | NDArray[Any]) -> list[Any]:
    if isinstance(frames, np.ndarray):
        arr = _check_frames(frames)
        return list(arr[None] if arr.ndim == 2 else arr)
    out = []
    for i, frame in enumerate(frames):
        arr = _check_frames(frame)
        if arr.ndim != 2:
            raise ValueError(f"training frame {i} must be 2-D, got shape {arr.shape}")
        out.append(arr)
    if not out:
        raise ValueError("no training frames given")
    return out


def _sample_batch(
    frames: list[NDArray[np.float32]],
    weights: NDArray[np.float64],
    rng: np.random.Generator,
    batch_size: int,
    patch: int,
) -> torch.Tensor:
    """Random patches, each randomly flipped and rotated by a multiple of 90 deg."""
    picks = rng.choice(len(frames), size=batch_size, p=weights)
    batch = np.empty((batch_size, patch, patch), np.float32)
    for i, k in enumerate(picks):
        frame = frames[k]
        y = int(rng.integers(0, frame.shape[0] - patch + 1))
        x = int(rng.integers(0, frame.shape[1] - patch + 1))
        p = frame[y : y + patch, x : x + patch]
        p = np.rot90(p, int(rng.integers(0, 4)))
        if rng.integers(0, 2):
            p = p[:, ::-1]
        batch[i] = p
    return torch.from_numpy(batch)[:, None]


def train_denoiser(
    frames: Sequence[NDArray[Any]] | NDArray[Any],
    *,
    steps: int = 2000,
    batch_size: int = 32,
    patch: int = 64,
    seed: int = 0,
    device: str = "cpu",
    base: int = 16,
    depth: int = 2,
    space_to_depth: int = 2,
    learning_rate: float = 2e-3,
    mask_span: int = 16,
    init: Denoiser | None = None,
    progress: Callable[[int, float], None] | None = None,
) -> Denoiser:
    """Train a denoiser on noisy frames alone (N2V2 blind-spot training).

    Parameters
    ----------
    frames
        2-D images (a list, or an (N, Y, X) array) of any real dtype; each is
        normalised on its own. Each side must be at least `patch`.
    steps, batch_size, patch
        Optimiser steps, patches per step and patch side (a multiple of the
        network's `multiple`, 8 by default).
    seed
        Seed of the weights, the patches and the masks.
    device
        Torch device to train on.
    base, depth, space_to_depth
        Architecture (see `DenoiserConfig`); ignored when `init` is given.
    learning_rate
        Peak of the AdamW learning rate, which decays along a cosine.
    mask_span
        One pixel in every `mask_span` x `mask_span` cell is masked.
    init
        A denoiser to fine-tune instead of starting from random weights.
    progress
        Called as ``progress(step, loss)`` after every step (1-based).

    Returns
    -------
    Denoiser
        On `device`, with `meta` recording the training settings.

    """
    started = time.perf_counter()
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    config = (
        init.config
        if init is not None
        else DenoiserConfig(base=base, depth=depth, space_to_depth=space_to_depth)
    )
    if steps < 0 or batch_size < 1:
        raise ValueError(
            f"need steps >= 0 and batch_size >= 1, got {steps}, {batch_size}"
        )
    if patch % config.multiple:
        raise ValueError(f"patch {patch} must be a multiple of {config.multiple}")
    arrays = _as_frame_list(frames)
    normed: list[NDArray[np.float32]] = []
    for i, frame in enumerate(arrays):
        if min(frame.shape) < patch:
            raise ValueError(
                f"training frame {i} of shape {frame.shape} is smaller than the "
                f"patch ({patch})"
            )
        f32 = frame.astype(np.float32)
        normed.append((f32 - f32.mean()) / max(float(f32.std()), _EPS))
    areas = np.array([f.size for f in normed], np.float64)
    weights = areas / areas.sum()
    net = copy.deepcopy(init.net) if init is not None else DenoiseNet(config)
    net.to(device).train()
    opt = torch.optim.AdamW(net.parameters(), lr=learning_rate, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * s / max(steps, 1)))
    )
    loss_value = float("nan")
    for step in range(1, steps + 1):
        clean = _sample_batch(normed, weights, rng, batch_size, patch)
        masked, mask = n2v_mask(clean, rng, span=mask_span)
        pred = net(masked.to(device))
        target, mask = clean.to(device), mask.to(device)
        loss = ((pred - target) ** 2)[mask].mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        loss_value = float(loss.detach())
        if progress is not None:
            progress(step, loss_value)
    meta = {
        "trainer": "scopeloop.models.train_denoiser",
        "steps": steps,
        "batch_size": batch_size,
        "patch": patch,
        "seed": seed,
        "learning_rate": learning_rate,
        "mask_span": mask_span,
        "frames": len(normed),
        "final_loss": loss_value,
        "train_seconds": round(time.perf_counter() - started, 1),
        "fine_tuned_from": init.sha256 if init is not None else "",
    }
    return Denoiser(config, net.cpu(), device=device, meta=meta)


def train_shipped_denoiser(
    out: Path | None = None,
    *,
    steps: int = 1000,
    clips: int = 48,
    seed: int = 0,
    progress: Callable[[int, float], None] | None = None,
) -> Denoiser:
    """Train the weights the package ships on simulated clips, and write them.

    `clips` clips of 2 frames at 192x192 are drawn with `random_clip` (nucleus
    size, brightness, texture, density, pixel size, noise, gain and offset
    drawn over a wide range), then `train_denoiser` runs `steps` steps with
    `seed`. The file goes to `out` (default: the shipped
    ``models/weights/denoiser.pt``), its `meta` recording how it was made.
    """
    from scopeloop.models._data import random_clip

    rng = np.random.default_rng(seed)
    frames: list[NDArray[np.float32]] = []
    for _ in range(clips):
        clip = random_clip(rng, shape=(192, 192), frames=2)
        frames.extend(clip.noisy)
    denoiser = train_denoiser(frames, steps=steps, seed=seed, progress=progress)
    path = shipped_model_path(Denoiser.kind) if out is None else Path(out)
    denoiser.save(
        path,
        meta={
            "command": (
                "python -c 'from scopeloop.models._denoise import "
                f"train_shipped_denoiser; train_shipped_denoiser("
                f"steps={steps}, clips={clips}, seed={seed})'"
            ),
            "data": f"random_clip(default_rng({seed}), shape=(192, 192), frames=2) "
            f"x {clips}, noisy frames only",
            "date": time.strftime("%Y-%m-%d"),
        },
    )
    return denoiser
