"""The N2V2 denoiser: blind-spot masking, training, model files, inference."""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING

import numpy as np
import pytest
import torch

from scopeloop.errors import ConfigError
from scopeloop.models._data import random_clip
from scopeloop.models._denoise import (
    DenoiseNet,
    Denoiser,
    DenoiserConfig,
    n2v_mask,
    train_denoiser,
)
from scopeloop.models._model import fold_batchnorm
from scopeloop.models._weights import file_sha256, save_model_file, shipped_model_path

if TYPE_CHECKING:
    from pathlib import Path

    from scopeloop.models._data import SimClip


@pytest.fixture(autouse=True)
def _two_threads() -> None:
    torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="module")
def clip() -> SimClip:
    return random_clip(np.random.default_rng(7), shape=(96, 96), frames=4)


@pytest.fixture(scope="module")
def shipped() -> Denoiser:
    return Denoiser.load()


def _mse(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))


# --- blind-spot masking ---------------------------------------------------------


def test_mask_replaces_with_median_of_neighbours_without_centre() -> None:
    patches = torch.randn(3, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    masked, mask = n2v_mask(patches, np.random.default_rng(0), span=8, radius=2)
    b, _, ys, xs = np.nonzero(mask.numpy())
    assert len(b) == 3 * 16  # one pixel per 8x8 cell
    d = np.arange(-2, 3)
    for i, y, x in zip(b, ys, xs, strict=True):
        # Reflect at the border like np.pad(mode="reflect"); never the pixel itself.
        rows = np.abs(y + d)
        rows = np.where(rows > 31, 62 - rows, rows)
        cols = np.abs(x + d)
        cols = np.where(cols > 31, 62 - cols, cols)
        neighbours = [
            patches[i, 0, r, c].item() for r in rows for c in cols if (r, c) != (y, x)
        ]
        lower_median = np.sort(neighbours)[(len(neighbours) - 1) // 2]
        assert masked[i, 0, y, x].item() == pytest.approx(lower_median)
    assert torch.equal(masked[~mask], patches[~mask])


@pytest.mark.parametrize("seed", range(8))
def test_mask_ignores_the_value_of_the_masked_pixel(seed: int) -> None:
    patches = torch.randn(4, 1, 16, 16, generator=torch.Generator().manual_seed(seed))
    _, mask = n2v_mask(patches, np.random.default_rng(3), span=16)
    spiked = patches.clone()
    spiked[mask] = 1e6  # one masked pixel per patch: no masked neighbours
    a, _ = n2v_mask(patches, np.random.default_rng(3), span=16)
    b, mask_b = n2v_mask(spiked, np.random.default_rng(3), span=16)
    assert torch.equal(mask, mask_b)
    assert torch.equal(a[mask], b[mask])
    assert float(b.abs().max()) < 100


# --- training -----------------------------------------------------------------


def test_training_lowers_masked_loss_and_error_vs_clean(clip: SimClip) -> None:
    frames = clip.noisy[:2, :64, :64]
    clean = clip.clean[:2, :64, :64]
    settings = {"batch_size": 4, "patch": 32, "base": 4, "depth": 1, "seed": 1}
    untrained = train_denoiser(frames, steps=0, **settings)
    losses: list[float] = []
    trained = train_denoiser(
        frames,
        steps=40,
        learning_rate=1e-2,
        mask_span=4,
        progress=lambda step, loss: losses.append(loss),
        **settings,
    )
    assert len(losses) == 40
    assert np.mean(losses[-10:]) < 0.9 * np.mean(losses[:5])
    assert _mse(trained(frames), clean) < 0.8 * _mse(untrained(frames), clean)
    assert trained.meta["steps"] == 40
    assert trained.sha256 == ""
    assert trained.path is None


def test_fine_tuning_the_shipped_weights_keeps_denoising(shipped: Denoiser) -> None:
    clip = random_clip(np.random.default_rng(404), shape=(64, 64), frames=2)
    tuned = train_denoiser(
        clip.noisy, steps=10, batch_size=4, patch=32, init=shipped, seed=2
    )
    assert tuned.config == shipped.config
    assert tuned.meta["fine_tuned_from"] == shipped.sha256
    assert _mse(tuned(clip.noisy), clip.clean) < _mse(clip.noisy, clip.clean)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"patch": 20}, "multiple of 8"),
        ({"patch": 128}, "smaller than the patch"),
    ],
    ids=["patch-not-multiple", "frame-too-small"],
)
def test_training_rejects_bad_settings(
    clip: SimClip, kwargs: dict[str, int], match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        train_denoiser(clip.noisy, steps=1, **kwargs)


# --- model files ----------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny() -> Denoiser:
    torch.manual_seed(0)
    config = DenoiserConfig(base=4, depth=1)
    return Denoiser(config, DenoiseNet(config))


def test_save_load_round_trip(tmp_path: Path, tiny: Denoiser, clip: SimClip) -> None:
    path = tmp_path / "d.pt"
    sha = tiny.save(path, meta={"note": "test"})
    loaded = Denoiser.load(path)
    assert sha == file_sha256(path) == loaded.sha256
    assert len(sha) == 64
    assert loaded.path == path
    assert loaded.meta["note"] == "test"
    assert loaded.config == tiny.config
    np.testing.assert_array_equal(loaded(clip.noisy), tiny(clip.noisy))


def test_load_wrong_kind_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "labels.pt"
    save_model_file(path, "labels", {}, torch.nn.Linear(2, 2))
    with pytest.raises(ConfigError, match=r"labels\.pt"):
        Denoiser.load(path)


def test_load_missing_file_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nothing\.pt"):
        Denoiser.load(tmp_path / "nothing.pt")


def test_load_bad_config_names_the_file(tmp_path: Path, tiny: Denoiser) -> None:
    path = tmp_path / "bad.pt"
    save_model_file(path, "denoiser", {"base": 4, "colour": True}, tiny.net)
    with pytest.raises(ConfigError, match=r"bad\.pt.*colour"):
        Denoiser.load(path)


def test_folded_batchnorm_gives_the_same_output() -> None:
    torch.manual_seed(0)
    net = DenoiseNet(DenoiserConfig(base=4, depth=1, norm=True))
    net.train()
    with torch.no_grad():
        for _ in range(3):  # move the running statistics off their defaults
            net(torch.randn(4, 1, 32, 32) * 2 + 1)
    net.eval()
    x = torch.randn(2, 1, 32, 32)
    folded = fold_batchnorm(copy.deepcopy(net))
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    with torch.no_grad():
        torch.testing.assert_close(folded(x), net(x), rtol=1e-4, atol=1e-5)


# --- inference ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("dtype", "scale", "offset"),
    [(np.uint8, 0.5, 0.0), (np.uint16, 8.0, 100.0), (np.float64, 1.0, 0.0)],
    ids=["uint8", "uint16-offset", "float64"],
)
def test_output_shape_dtype_and_grey_scale(
    shipped: Denoiser, clip: SimClip, dtype: type, scale: float, offset: float
) -> None:
    frames = np.clip(
        (clip.noisy[:2, :45, :70] - clip.offset_adu) * scale + offset, 0, None
    )
    frames = frames.astype(dtype)
    out = shipped(frames)
    assert out.shape == frames.shape
    assert out.dtype == np.float32
    single = shipped(frames[0])
    assert single.shape == frames.shape[1:]
    np.testing.assert_allclose(single, out[0], rtol=1e-4, atol=1e-3 * scale)
    # Same grey scale: the mean is kept and the spread shrinks, not rescaled.
    mean, std = float(frames.mean()), float(frames.std())
    assert abs(float(out.mean()) - mean) < 0.1 * std
    assert 0.3 * std < float(out.std()) <= 1.05 * std


def test_batches_give_the_same_result_as_single_frames(
    tiny: Denoiser, clip: SimClip
) -> None:
    batched = Denoiser(tiny.config, tiny.net, batch_size=3)
    out = batched(clip.noisy)
    for t in range(len(clip)):
        np.testing.assert_allclose(out[t], tiny(clip.noisy[t]), rtol=1e-5, atol=1e-3)


@pytest.mark.parametrize(
    ("frames", "match"),
    [
        (np.full((16, 16), np.nan, np.float32), "NaN"),
        (np.array([[0.0, np.inf]] * 4), "infinite"),
        (np.zeros(16), "shape"),
        (np.zeros((1, 1, 16, 16)), "shape"),
        (np.zeros((0, 16, 16)), "empty"),
        (np.zeros((16, 16), np.complex64), "real"),
        (np.zeros((16, 16), bool), "real"),
    ],
    ids=["nan", "inf", "1-d", "4-d", "empty", "complex", "bool"],
)
def test_bad_input_raises_value_error(
    tiny: Denoiser, frames: np.ndarray, match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        tiny(frames)


def test_constant_frame_stays_finite(tiny: Denoiser) -> None:
    out = tiny(np.full((20, 20), 7, np.uint16))
    assert np.isfinite(out).all()
    np.testing.assert_allclose(out, 7, atol=1e-3)


# --- shipped weights --------------------------------------------------------------


def test_shipped_weights_reduce_error_on_a_simulated_clip(shipped: Denoiser) -> None:
    assert shipped.path == shipped_model_path("denoiser")
    assert shipped.sha256 == file_sha256(shipped_model_path("denoiser"))
    assert shipped_model_path("denoiser").stat().st_size < 1_000_000
    assert shipped.meta["seed"] == 0 and "command" in shipped.meta
    # Low-light clips (noisy frame under 30 dB), not among those the weights saw.
    # On bright clips (50 dB) a blind-spot denoiser blurs fine texture and does
    # worse than the raw frame: it cannot learn the identity.
    for seed in (303, 404, 11):
        clip = random_clip(np.random.default_rng(seed), shape=(128, 128), frames=1)
        restored = shipped(clip.noisy)
        assert _mse(restored, clip.clean) < 0.8 * _mse(clip.noisy, clip.clean)
