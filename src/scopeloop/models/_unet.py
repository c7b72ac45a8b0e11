"""A small 2-D U-Net, in the plain and the Noise2Void 2 manner.

N2V2 (Hoeck et al., 2022) removes the checkerboard artefacts of blind-spot
training with two changes that are options here: max-blur pooling instead of
max pooling (`blurpool=True`) and no skip connection at the top level
(`top_skip=False`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["MaxBlurPool", "UNet", "pad_to_multiple"]


class MaxBlurPool(nn.Module):
    """Max pooling with stride 1, then a [1, 2, 1] blur with stride 2."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        k = torch.tensor([1.0, 2.0, 1.0])
        kernel = (k[:, None] * k[None, :]) / 16.0
        self.register_buffer("kernel", kernel.expand(channels, 1, 3, 3).clone())
        self.channels = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Halve the resolution of `x` (N, C, H, W)."""
        x = F.max_pool2d(F.pad(x, (0, 1, 0, 1), mode="replicate"), 2, stride=1)
        kernel: torch.Tensor = self.kernel  # type: ignore[assignment]
        x = F.pad(x, (1, 1, 1, 1), mode="replicate")
        return F.conv2d(x, kernel, stride=2, groups=self.channels)


def _block(cin: int, cout: int, norm: bool) -> nn.Sequential:
    layers: list[nn.Module] = []
    for c in (cin, cout):
        layers.append(nn.Conv2d(c, cout, 3, padding=1, bias=not norm))
        if norm:
            layers.append(nn.BatchNorm2d(cout))
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class UNet(nn.Module):
    """U-Net with `depth` poolings and `base` channels at the top level.

    Channels double at each level. The input's height and width must be
    multiples of ``2 ** depth`` (see `pad_to_multiple`).
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 1,
        *,
        base: int = 16,
        depth: int = 2,
        blurpool: bool = False,
        top_skip: bool = True,
        norm: bool = True,
    ) -> None:
        super().__init__()
        self.depth = depth
        self.top_skip = top_skip
        widths = [base * 2**i for i in range(depth + 1)]
        self.down = nn.ModuleList()
        self.pool = nn.ModuleList()
        cin = in_channels
        for w in widths[:-1]:
            self.down.append(_block(cin, w, norm))
            self.pool.append(MaxBlurPool(w) if blurpool else nn.MaxPool2d(2))
            cin = w
        self.bottom = _block(cin, widths[-1], norm)
        self.up = nn.ModuleList()
        for level in reversed(range(depth)):
            skip = widths[level] if (level > 0 or top_skip) else 0
            self.up.append(_block(widths[level + 1] + skip, widths[level], norm))
        self.head = nn.Conv2d(widths[0], out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map (N, in_channels, H, W) to (N, out_channels, H, W)."""
        skips = []
        for block, pool in zip(self.down, self.pool, strict=True):
            x = block(x)
            skips.append(x)
            x = pool(x)
        x = self.bottom(x)
        for i, block in enumerate(self.up):
            level = self.depth - 1 - i
            x = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)
            if level > 0 or self.top_skip:
                x = torch.cat([x, skips[level]], dim=1)
            x = block(x)
        out: torch.Tensor = self.head(x)
        return out


def pad_to_multiple(
    x: torch.Tensor, multiple: int
) -> tuple[torch.Tensor, tuple[int, int]]:
    """Reflect-pad (N, C, H, W) at the bottom/right to multiples of `multiple`.

    Returns the padded tensor and the original (H, W) to crop back to.
    """
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph or pw:
        mode = "reflect" if ph < h and pw < w else "replicate"
        x = F.pad(x, (0, pw, 0, ph), mode=mode)
    return x, (h, w)
