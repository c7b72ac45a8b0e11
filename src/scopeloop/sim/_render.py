"""Render what a field of view shows: fluorophore images and label images."""

from __future__ import annotations

import math
from functools import cache
from typing import TYPE_CHECKING

import numpy as np
from scipy import ndimage

if TYPE_CHECKING:
    from collections.abc import Iterator

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


def _windows(
    view: NucleiView, shape: tuple[int, int]
) -> Iterator[tuple[int, slice, slice, NDArray[np.float32], NDArray[np.float32]]]:
    """For each nucleus in the image: its index, pixel window and rotated coordinates.

    `u` runs along the nucleus's `a` axis and `v` along `b`, in pixels from
    its centre.
    """
    h, w = shape
    rows = zip(
        view.y_px.tolist(),
        view.x_px.tolist(),
        view.a_px.tolist(),
        view.b_px.tolist(),
        view.angle_rad.tolist(),
        strict=True,
    )
    for k, (yc, xc, a, b, angle) in enumerate(rows):
        reach = max(a, b) + 2
        y0, y1 = max(int(yc - reach), 0), min(int(yc + reach) + 2, h)
        x0, x1 = max(int(xc - reach), 0), min(int(xc + reach) + 2, w)
        if y0 >= y1 or x0 >= x1:
            continue
        dy = np.arange(y0 - yc, y1 - yc, dtype=np.float32)[:, None]
        dx = np.arange(x0 - xc, x1 - xc, dtype=np.float32)[None, :]
        cos, sin = np.float32(math.cos(angle)), np.float32(math.sin(angle))
        u = (dx * cos + dy * sin).astype(np.float32, copy=False)
        v = (dy * cos - dx * sin).astype(np.float32, copy=False)
        yield k, slice(y0, y1), slice(x0, x1), u, v


def _radius(
    u: NDArray[np.float32], v: NDArray[np.float32], a: float, b: float
) -> NDArray[np.float32]:
    """Elliptical radius: 1 on the nucleus's edge."""
    ua, vb = u * np.float32(1 / a), v * np.float32(1 / b)
    rho: NDArray[np.float32] = np.sqrt(ua * ua + vb * vb)
    return rho


def render_fluorescence(
    view: NucleiView, shape: tuple[int, int], pixel_um: float
) -> NDArray[np.float32]:
    """Expected photons per pixel per mW per ms from the nuclei in `view`.

    Each nucleus is an ellipse with a soft edge, a slight dome (thicker in the
    middle) and chromatin texture that turns with the nucleus.
    """
    out = np.zeros(shape, np.float32)
    bank = _texture_bank()
    scale = np.float32(pixel_um / _TEXEL_UM)
    a_px, b_px = view.a_px.tolist(), view.b_px.tolist()
    intensity, contrast = view.intensity.tolist(), view.texture.tolist()
    ids, tex_ids = view.ids.tolist(), view.texture_id.tolist()
    for k, ys, xs, u, v in _windows(view, shape):
        if intensity[k] <= 0:
            continue
        rho = _radius(u, v, a_px[k], b_px[k])
        edge = np.float32(min(a_px[k], b_px[k]) / _EDGE_PX)
        profile = np.minimum(np.maximum((1 - rho) * edge + 0.5, 0), 1)
        dome = np.sqrt(np.maximum(1 - rho * rho, 0))
        profile *= dome * np.float32(0.3) + np.float32(0.7)
        tu = (u * scale + ids[k] * 17).astype(np.int64) & (_TEX - 1)
        tv = (v * scale + ids[k] * 29).astype(np.int64) & (_TEX - 1)
        tex = bank[tex_ids[k] % bank.shape[0]][tv, tu]
        texture = np.maximum(tex * np.float32(contrast[k]) + 1, 0)
        out[ys, xs] += profile * texture * np.float32(intensity[k])
    return out


def render_labels(view: NucleiView, shape: tuple[int, int]) -> NDArray[np.uint32]:
    """Instance labels (value = nucleus id) of the nuclei in `view`."""
    out = np.zeros(shape, np.uint32)
    a_px, b_px, ids = view.a_px.tolist(), view.b_px.tolist(), view.ids.tolist()
    for k, ys, xs, u, v in _windows(view, shape):
        inside = _radius(u, v, a_px[k], b_px[k]) < 1.0
        out[ys, xs][inside] = ids[k]
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
