"""Render what a field of view shows: fluorophore images and label images."""

from __future__ import annotations

from functools import cache
from typing import TYPE_CHECKING

import numpy as np
from scipy import ndimage

if TYPE_CHECKING:
    from numpy.typing import NDArray

    from ._culture import NucleiView

__all__ = ["blur_for_defocus", "render_fluorescence", "render_labels"]

_TEXEL_UM = 0.4  # size of one chromatin-texture cell
_TEX = 64  # texture tile side, in texels
_EDGE_PX = 0.8  # width of the soft nucleus edge, in pixels


@cache
def _texture_bank(n: int = 32) -> NDArray[np.float32]:
    """Band-passed noise tiles (mean 0, std 1) that look like chromatin."""
    rng = np.random.default_rng(12345)
    noise = rng.standard_normal((n, _TEX, _TEX))
    fine = ndimage.gaussian_filter(noise, (0, 0.8, 0.8), mode="wrap")
    coarse = ndimage.gaussian_filter(noise, (0, 3.0, 3.0), mode="wrap")
    bank = fine - 0.7 * coarse
    bank -= bank.mean(axis=(1, 2), keepdims=True)
    bank /= bank.std(axis=(1, 2), keepdims=True)
    return np.asarray(bank, np.float32)


def _patch(
    view: NucleiView, k: int, shape: tuple[int, int], grow: float = 1.0
) -> (
    tuple[slice, slice, NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]
    | None
):
    """Pixel window around nucleus `k` with its rotated coordinates and radius."""
    h, w = shape
    a, b = view.a_px[k], view.b_px[k]
    yc, xc = view.y_px[k], view.x_px[k]
    reach = max(a, b) * grow + 2
    y0, y1 = max(int(yc - reach), 0), min(int(yc + reach) + 2, h)
    x0, x1 = max(int(xc - reach), 0), min(int(xc + reach) + 2, w)
    if y0 >= y1 or x0 >= x1:
        return None
    dy = np.arange(y0, y1, dtype=np.float64)[:, None] - yc
    dx = np.arange(x0, x1, dtype=np.float64)[None, :] - xc
    cos, sin = np.cos(view.angle_rad[k]), np.sin(view.angle_rad[k])
    u = dx * cos + dy * sin
    v = dy * cos - dx * sin
    rho = np.sqrt((u / a) ** 2 + (v / b) ** 2)
    return slice(y0, y1), slice(x0, x1), u, v, rho


def render_fluorescence(
    view: NucleiView, shape: tuple[int, int], pixel_um: float
) -> NDArray[np.float32]:
    """Expected photons per pixel per mW per ms from the nuclei in `view`.

    Each nucleus is an ellipse with a soft edge, a slight dome (thicker in the
    middle) and chromatin texture that turns with the nucleus.
    """
    out = np.zeros(shape, np.float32)
    bank = _texture_bank()
    scale = pixel_um / _TEXEL_UM
    for k in range(len(view)):
        if view.intensity[k] <= 0:
            continue
        win = _patch(view, k, shape)
        if win is None:
            continue
        ys, xs, u, v, rho = win
        edge = min(view.a_px[k], view.b_px[k]) / _EDGE_PX
        profile = np.clip((1.0 - rho) * edge + 0.5, 0.0, 1.0)
        profile *= 0.7 + 0.3 * np.sqrt(np.clip(1.0 - rho * rho, 0.0, 1.0))
        seed = int(view.ids[k])
        tu = (u * scale + seed * 17).astype(np.int64) % _TEX
        tv = (v * scale + seed * 29).astype(np.int64) % _TEX
        tex = bank[int(view.texture_id[k]) % bank.shape[0]][tv, tu]
        signal = profile * np.maximum(1.0 + view.texture[k] * tex, 0.0)
        out[ys, xs] += (view.intensity[k] * signal).astype(np.float32)
    return out


def render_labels(view: NucleiView, shape: tuple[int, int]) -> NDArray[np.uint32]:
    """Instance labels (value = nucleus id) of the nuclei in `view`."""
    out = np.zeros(shape, np.uint32)
    for k in range(len(view)):
        win = _patch(view, k, shape)
        if win is None:
            continue
        ys, xs, _, _, rho = win
        inside = rho < 1.0
        out[ys, xs][inside] = view.ids[k]
    return out


def blur_for_defocus(
    image: NDArray[np.float32],
    defocus_um: float,
    depth_of_field_um: float,
    pixel_um: float,
) -> NDArray[np.float32]:
    """Blur `image` as a widefield microscope defocused by `defocus_um` would."""
    sigma_px = 0.5 * abs(defocus_um) / depth_of_field_um / pixel_um
    if sigma_px < 0.3:
        return image
    return ndimage.gaussian_filter(image, sigma_px, mode="constant")  # type: ignore[no-any-return]
