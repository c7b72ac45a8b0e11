"""Rendering: fluorescence and labels of the same nuclei agree; defocus blurs."""

from __future__ import annotations

import math

import numpy as np
import pytest

from scopeloop.sim import NucleiView, Phase, render_fluorescence, render_labels
from scopeloop.sim._render import blur_for_defocus

SHAPE = (128, 160)
PIXEL_UM = 0.5


def make_view(rows: list[dict[str, float]]) -> NucleiView:
    """A view of nuclei given by centre (px), semi-axes (px), angle and intensity."""
    n = len(rows)

    def col(key: str, default: float = 0.0) -> np.ndarray:
        return np.array([r.get(key, default) for r in rows], dtype=np.float64)

    return NucleiView(
        ids=np.array([int(r["id"]) for r in rows], np.int64),
        y_px=col("y"),
        x_px=col("x"),
        a_px=col("a"),
        b_px=col("b"),
        angle_rad=col("angle"),
        intensity=col("intensity", 1.0),
        texture=col("texture", 0.2),
        texture_id=np.arange(n, dtype=np.int64),
        phase=np.full(n, Phase.INTERPHASE, np.int8),
        dose_mj=np.zeros(n),
        y_um=col("y") * PIXEL_UM,
        x_um=col("x") * PIXEL_UM,
    )


TWO_NUCLEI = [
    {
        "id": 7,
        "y": 40.0,
        "x": 50.0,
        "a": 12.0,
        "b": 8.0,
        "angle": 0.0,
        "intensity": 2.0,
    },
    {
        "id": 12,
        "y": 90.0,
        "x": 110.0,
        "a": 10.0,
        "b": 10.0,
        "angle": 0.7,
        "intensity": 5.0,
    },
]


@pytest.mark.parametrize("k", [0, 1], ids=["ellipse", "disc"])
def test_labels_cover_each_nucleus_with_its_id(k: int) -> None:
    view = make_view(TWO_NUCLEI)
    nucleus = TWO_NUCLEI[k]

    labels = render_labels(view, SHAPE)

    mask = labels == nucleus["id"]
    assert labels[int(nucleus["y"]), int(nucleus["x"])] == nucleus["id"]
    assert mask.sum() == pytest.approx(math.pi * nucleus["a"] * nucleus["b"], rel=0.05)
    ys, xs = np.nonzero(mask)
    assert ys.mean() == pytest.approx(nucleus["y"], abs=0.5)
    assert xs.mean() == pytest.approx(nucleus["x"], abs=0.5)
    assert set(np.unique(labels)) == {0, 7, 12}


def test_ellipse_is_oriented_along_its_angle() -> None:
    view = make_view(
        [{"id": 1, "y": 64.0, "x": 80.0, "a": 20.0, "b": 5.0, "angle": math.pi / 2}]
    )

    labels = render_labels(view, SHAPE)

    ys, xs = np.nonzero(labels == 1)
    assert np.ptp(ys) > 3 * np.ptp(xs)  # long axis along y at 90 degrees


def test_fluorescence_is_where_the_labels_are_and_scales_with_intensity() -> None:
    view = make_view(TWO_NUCLEI)

    light = render_fluorescence(view, SHAPE, PIXEL_UM)
    labels = render_labels(view, SHAPE)

    assert light.dtype == np.float32
    assert light.min() >= 0
    # Nothing beyond the soft edge (about one pixel) of any nucleus.
    far = np.ones(SHAPE, bool)
    for n in TWO_NUCLEI:
        yy, xx = np.indices(SHAPE)
        far &= np.hypot(yy - n["y"], xx - n["x"]) > max(n["a"], n["b"]) + 2
    assert np.all(light[far] == 0)
    # Mean brightness inside each nucleus is its intensity, give or take the
    # dome (0.7 at the rim .. 1.0 at the centre) and texture (mean 1).
    for n in TWO_NUCLEI:
        inside = light[labels == n["id"]].mean()
        assert 0.75 * n["intensity"] < inside < 1.05 * n["intensity"]


def test_nucleus_partly_outside_the_image_is_clipped_not_wrapped() -> None:
    view = make_view([{"id": 3, "y": 2.0, "x": 2.0, "a": 10.0, "b": 10.0}])

    light = render_fluorescence(view, SHAPE, PIXEL_UM)
    labels = render_labels(view, SHAPE)

    assert labels[0, 0] == 3
    assert labels[-1, -1] == 0
    assert light[0, 0] > 0
    assert light[-20:, -20:].sum() == 0


@pytest.mark.parametrize(
    ("defocus_um", "blurred"),
    [
        pytest.param(0.0, False, id="in-focus"),
        pytest.param(0.2, False, id="within-depth-of-field"),
        pytest.param(3.0, True, id="3um"),
        pytest.param(-3.0, True, id="minus-3um"),
        pytest.param(10.0, True, id="10um"),
    ],
)
def test_defocus_blurs_and_conserves_light(defocus_um: float, blurred: bool) -> None:
    image = render_fluorescence(make_view(TWO_NUCLEI), SHAPE, PIXEL_UM)

    out = blur_for_defocus(image, defocus_um, depth_of_field_um=1.5, pixel_um=PIXEL_UM)

    if not blurred:
        assert out is image
        return
    assert out.max() < 0.9 * image.max()
    assert out.sum() == pytest.approx(image.sum(), rel=0.01)  # nuclei far from edges


def test_blur_grows_with_defocus_and_is_symmetric() -> None:
    image = render_fluorescence(make_view(TWO_NUCLEI), SHAPE, PIXEL_UM)

    peaks = [
        blur_for_defocus(image, dz, 1.5, PIXEL_UM).max()
        for dz in (0.0, 1.0, 3.0, 6.0, 12.0)
    ]
    plus = blur_for_defocus(image, 4.0, 1.5, PIXEL_UM)
    minus = blur_for_defocus(image, -4.0, 1.5, PIXEL_UM)

    assert peaks == sorted(peaks, reverse=True)
    assert len(set(peaks)) == len(peaks)
    np.testing.assert_array_equal(plus, minus)
