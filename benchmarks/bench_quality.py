"""Quality of the worker's models against ground truth: denoising, labels, divisions.

Run from the repository root (the project's virtualenv active):

    python benchmarks/bench_quality.py                  # everything (see README)
    python benchmarks/bench_quality.py --quick          # smoke run, < 3 min
    python benchmarks/bench_quality.py --parts denoise --budget-patches 24576

Three parts, each printed as one table with its goal:

1. **Denoising** (``--parts denoise``): PSNR and SSIM (``skimage.metrics``,
   ``data_range`` = max - min of the clean reference) of the noisy frame, a
   Gaussian filter, non-local means after a variance-stabilising transform,
   CAREamics N2V2 and scopeloop's denoiser trained on the same noisy frames
   with the same budget, and scopeloop's shipped weights as they are. Two data
   sets: simulated clips (``random_clip``, fixed seed; every frame of every
   clip is scored against its noise-free ``clean``) and the real FMD pairs
   (``fmd-bpae-nuclei``: trained on all 64 noisy frames, scored on frame 0 of
   each field against the 50-frame average). Goal: scopeloop (trained) beats
   CAREamics N2V2 by >= 0.5 dB on each data set.
2. **Labels** (``--parts labels``): average precision at IoU 0.5 of the
   ``Segmenter`` on held-out simulated frames (given the noisy frame,
   the frame restored by the shipped denoiser, and the noise-free frame), and
   on the gold segmentation frames of GOWT1 (restore then label, as the worker
   does, and labels of the raw frame).
3. **Divisions** (``--parts divisions``): precision, recall and F1 of the
   divisions the full pipeline (``Pipeline.load``) reports on simulated
   time-lapses with a short cell cycle, and on GOWT1 (``man_track.txt``). Two
   more rows attribute the errors: ground-truth labels with the model's
   mitosis score, and the tracker alone fed ground-truth labels and phases.
   Goal: F1 >= 0.95 on the simulated time-lapses.

Fairness of the trained denoisers: both see the same noisy frames and the
**same number of 64 x 64 training patches** (``--budget-patches``): CAREamics
at its default batch of 128 for whole epochs (the patches it saw are counted
by a Lightning callback), then scopeloop at its default batch of 32 for as
many patches. Their wall-clock training times are printed beside them; a
same-patches budget does not reward the cheaper network with more updates.
Each frame is standardised (minus its mean, over its standard deviation)
before CAREamics sees it and its output is mapped back (the normalisation
scopeloop's denoiser does inside), so that the simulated clips' very
different grey scales do not handicap CAREamics' one global normalisation.

CAREamics runs in a subprocess of its own interpreter (``--careamics-python``,
default ``/work/venv-careamics/bin/python``; see the benchmarks README for the
install), exchanging ``.npy`` files through a temporary folder; without it the
row is skipped with the reason printed. CAREamics is no dependency of
scopeloop.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import tifffile
from scipy import ndimage as ndi
from scipy.optimize import linear_sum_assignment
from skimage.metrics import peak_signal_noise_ratio, structural_similarity
from skimage.restoration import denoise_nl_means

from scopeloop.errors import ScopeloopError
from scopeloop.versions import package_versions

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from numpy.typing import NDArray

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_REAL = ROOT.parent / "shared" / "data" / "real"
DEFAULT_CAREAMICS = Path("/work/venv-careamics/bin/python")

GOAL_DB = 0.5  # scopeloop (trained) minus CAREamics N2V2, PSNR, per data set
GOAL_F1 = 0.95  # divisions on simulated time-lapses
FRAME_TOLERANCE = 2  # a detected division may be this many frames early or late
PATCH = 64  # training patch side of both trained denoisers
CAREAMICS_BATCH = 128  # CAREamics' N2V default
SCOPELOOP_BATCH = 32  # train_denoiser's default
GAUSS_SIGMAS = (0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 3.0)
NLM_H = (0.3, 0.45, 0.6, 0.8, 1.0, 1.3)  # in units of the stabilised noise (1)
MITOTIC = (1, 2, 3, 4)  # scopeloop.sim.Phase: prophase .. telophase

Array = Any  # numpy arrays of any dtype, for readability of signatures


# -- settings ------------------------------------------------------------------


@dataclass(frozen=True)
class ModelFiles:
    """Model files to score (None: the shipped weights)."""

    denoiser: Path | None = None
    labels: Path | None = None
    mitosis: Path | None = None

    def describe(self) -> dict[str, str]:
        """Model name -> 'shipped' or the file's name, with its sha256."""
        from scopeloop.models._weights import file_sha256, shipped_model_path

        out = {}
        for name in ("denoiser", "labels", "mitosis"):
            given = getattr(self, name)
            path = given or shipped_model_path(name)
            where = "shipped" if given is None else path.name
            digest = file_sha256(path)[:12] if path.exists() else "missing"
            out[name] = f"{where} {digest}"
        return out

    def pipeline(self, *, denoise: bool = True) -> Any:
        """`Pipeline.load` on the CPU with these files."""
        from scopeloop.worker import Pipeline

        return Pipeline.load(
            device="cpu",
            denoiser=self.denoiser if denoise else False,
            labels=self.labels,
            mitosis=self.mitosis,
        )


@dataclass(frozen=True)
class Settings:
    """Sizes of every part; `quick()` shrinks them for a smoke run."""

    sim_clips: int = 4
    sim_frames: int = 4
    sim_size: int = 512
    fmd_fields: int = 4
    fmd_crop: int = 512
    budget_patches: int = 8192
    label_clips: int = 12
    label_size: int = 256
    gowt1_seg_frames: int = 0  # 0: all listed frames
    division_seeds: tuple[int, ...] = (1, 2, 3)
    division_frames: int = 48
    division_size: int = 512
    gowt1_frames: tuple[int, int] = (0, 92)

    @classmethod
    def quick(cls) -> Settings:
        """About 2-3 minutes on 2 cores: every code path, small sizes."""
        return cls(
            sim_clips=2,
            sim_frames=2,
            sim_size=256,
            fmd_fields=2,
            fmd_crop=128,
            budget_patches=128,
            label_clips=3,
            label_size=128,
            gowt1_seg_frames=3,
            division_seeds=(1,),
            division_frames=16,
            division_size=256,
            gowt1_frames=(15, 23),
        )


# -- small helpers ---------------------------------------------------------------


def load_note() -> str:
    """One-minute and five-minute load averages, as printed in the tables."""
    one, five, _ = os.getloadavg()
    return f"load {one:.1f}/{five:.1f}"


def fmt(value: float | None, digits: int = 2) -> str:
    """A number for a table cell; '-' for None or NaN."""
    if value is None or not np.isfinite(value):
        return "-"
    return f"{value:.{digits}f}"


def print_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """A fixed-width text table; the first column left-aligned."""
    widths = [
        max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))
    ]
    line = "  ".join(
        h.ljust(w) if i == 0 else h.rjust(w)
        for i, (h, w) in enumerate(zip(headers, widths, strict=True))
    )
    print(line)
    print("-" * len(line))
    for row in rows:
        print(
            "  ".join(
                str(c).ljust(w) if i == 0 else str(c).rjust(w)
                for i, (c, w) in enumerate(zip(row, widths, strict=True))
            )
        )


# -- denoising metrics and classic filters ----------------------------------------


def psnr_ssim(clean: Array, estimate: Array) -> tuple[float, float]:
    """PSNR (dB) and SSIM of one frame, data range = the clean frame's range."""
    ref = np.asarray(clean, np.float64)
    est = np.asarray(estimate, np.float64)
    span = float(ref.max() - ref.min()) or 1.0
    return (
        float(peak_signal_noise_ratio(ref, est, data_range=span)),
        float(structural_similarity(ref, est, data_range=span)),
    )


@dataclass(frozen=True)
class NoiseModel:
    """Poisson-Gaussian noise: variance = `slope` * grey level + `intercept`."""

    slope: float
    intercept: float

    def forward(self, image: Array) -> NDArray[np.float64]:
        """Generalised Anscombe transform: noise of unit variance.

        With u = x / a + b / a^2 (Poisson-like counts), z = 2 sqrt(u + 3/8).
        """
        u = np.asarray(image, np.float64) / self.slope + self.intercept / self.slope**2
        out: NDArray[np.float64] = 2.0 * np.sqrt(np.maximum(u + 0.375, 0.0))
        return out

    def inverse(self, z: Array) -> NDArray[np.float64]:
        """Closed-form approximation of the exact unbiased inverse (Makitalo & Foi).

        z is clipped below at sqrt(3/2), where the formula gives u = 0 (it
        diverges towards z = 0).
        """
        z = np.maximum(np.asarray(z, np.float64), np.sqrt(1.5))
        s = np.sqrt(1.5)
        u = 0.25 * z**2 + 0.25 * s / z - 1.375 / z**2 + 0.625 * s / z**3 - 0.125
        out: NDArray[np.float64] = self.slope * u - self.intercept / self.slope
        return out


def diagonal_noise(frame: Array) -> NDArray[np.float64]:
    """Half the second diagonal difference: pure noise of the same variance.

    For independent pixel noise of variance v, (x00 - x10 - x01 + x11) / 2 has
    variance v; a signal that is locally linear cancels.
    """
    x = np.asarray(frame, np.float64)
    out: NDArray[np.float64] = (x[:-1, :-1] - x[1:, :-1] - x[:-1, 1:] + x[1:, 1:]) / 2
    return out


def robust_variance(values: Array) -> float:
    """Variance from the median absolute deviation (Gaussian-consistent)."""
    v = np.asarray(values, np.float64)
    return float((1.4826 * np.median(np.abs(v - np.median(v)))) ** 2)


def noise_from_calibration(
    frame: Array, gain_adu_per_e: float, offset_adu: float
) -> NoiseModel:
    """Noise model from a known camera gain and offset (as from a calibration).

    The read-noise term comes from the darkest 10 % of the frame (background,
    where the image is flat): variance there minus its shot noise.
    """
    x = np.asarray(frame, np.float64)
    smooth = ndi.uniform_filter(x, 5)[:-1, :-1]
    dark = smooth <= np.quantile(smooth, 0.1)
    var_dark = robust_variance(diagonal_noise(x)[dark])
    shot = gain_adu_per_e * max(float(np.median(smooth[dark])) - offset_adu, 0.0)
    read = max(var_dark - shot, 1e-3)
    return NoiseModel(gain_adu_per_e, read - gain_adu_per_e * offset_adu)


def noise_from_repeats(frames: Array, bins: int = 32) -> NoiseModel:
    """Noise model fitted to per-pixel mean and variance over repeated frames.

    `frames` is (R, Y, X): R noisy frames of the same static scene. The
    variance is fitted, binned by mean, as a straight line of the mean.
    """
    stack = np.asarray(frames, np.float64)
    mean = stack.mean(0).ravel()
    var = stack.var(0, ddof=1).ravel()
    edges = np.quantile(mean, np.linspace(0, 1, bins + 1))
    which = np.clip(np.searchsorted(edges, mean, side="right") - 1, 0, bins - 1)
    means, variances = [], []
    for b in range(bins):
        sel = which == b
        if sel.sum() >= 50:
            means.append(float(mean[sel].mean()))
            variances.append(float(np.median(var[sel])))
    slope, intercept = np.polyfit(means, variances, 1)
    return NoiseModel(max(float(slope), 1e-6), float(intercept))


def gaussian_filter(frame: Array, sigma: float) -> NDArray[np.float32]:
    """Gaussian smoothing with reflected borders."""
    return ndi.gaussian_filter(np.asarray(frame, np.float32), sigma, mode="reflect")


def nlm_vst(frame: Array, noise: NoiseModel, h: float) -> NDArray[np.float32]:
    """Non-local means on the stabilised frame (noise sigma 1), transformed back."""
    z = noise.forward(frame)
    smooth = denoise_nl_means(
        z, h=h, sigma=1.0, patch_size=5, patch_distance=6, fast_mode=True
    )
    return noise.inverse(smooth).astype(np.float32)


def held_out_choice(
    scores: NDArray[np.float64], groups: NDArray[np.int64]
) -> NDArray[np.int64]:
    """For each frame, the parameter index best on the frames of other groups.

    `scores` is (frames, parameters) PSNR; `groups` names the clip or field of
    each frame. A frame's parameter is never chosen on its own clip or field.
    """
    picks = np.empty(len(groups), np.int64)
    for i, g in enumerate(groups):
        others = groups != g
        picks[i] = int(np.argmax(scores[others].mean(0)))
    return picks


# -- CAREamics in its own interpreter --------------------------------------------

CAREAMICS_RUNNER = '''\
"""Train CAREamics N2V2 on train.npy and predict predict.npy (bench_quality.py)."""
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

# The registry's torchvision wheel is a CUDA build whose operators do not load
# next to CPU torch, and careamics imports torchvision (N2V uses none of its
# operators): declaring the missing schemas lets torchvision import.
_lib = torch.library.Library("torchvision", "DEF")
for _schema in (
    "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "roi_align(Tensor input, Tensor rois, float spatial_scale, SymInt pooled_height,"
    " SymInt pooled_width, int sampling_ratio, bool aligned) -> Tensor",
):
    _lib.define(_schema)

import careamics  # noqa: E402
from careamics import CAREamist  # noqa: E402
from careamics.config import create_advanced_n2v_config  # noqa: E402
from lightning.pytorch import Callback  # noqa: E402


class CountPatches(Callback):
    """Counts the training patches and steps, whatever the epoch length."""

    def __init__(self):
        self.patches = 0
        self.steps = 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        first = batch
        while isinstance(first, (list, tuple)):
            first = first[0]
        self.patches += int(first.shape[0])
        self.steps += 1


work = Path(sys.argv[1])
settings = json.loads((work / "settings.json").read_text())
train = np.load(work / "train.npy")
pred_in = np.load(work / "predict.npy")
config = create_advanced_n2v_config(
    experiment_name="bench_quality_n2v2",
    data_type="array",
    axes="SYX",
    patch_size=[settings["patch"], settings["patch"]],
    batch_size=settings["batch_size"],
    num_epochs=settings["epochs"],
    use_n2v2=True,
    seed=settings["seed"],
)
counter = CountPatches()
careamist = CAREamist(
    config,
    work_dir=work / "careamics",
    callbacks=[counter],
    enable_progress_bar=False,
)
t0 = time.perf_counter()
careamist.train(train_data=train)
t1 = time.perf_counter()
out, _ = careamist.predict(pred_in, axes="SYX")
t2 = time.perf_counter()
pred = np.concatenate(
    [np.asarray(o, np.float32).reshape(-1, *pred_in.shape[1:]) for o in out]
)
np.save(work / "predicted.npy", pred.reshape(pred_in.shape))
(work / "result.json").write_text(json.dumps({
    "careamics": careamics.__version__,
    "torch": torch.__version__,
    "train_s": t1 - t0,
    "predict_s": t2 - t1,
    "parameters": sum(p.numel() for p in careamist.model.parameters()),
    "patches": counter.patches,
    "steps": counter.steps,
}))
'''


def careamics_epochs(train_shape: Sequence[int], budget_patches: int) -> int:
    """CAREamics epochs that come closest to `budget_patches` patches.

    One CAREamics epoch visits each frame's area about once: roughly
    frames x (Y // 64) x (X // 64) patches. The patches it really saw are
    counted during training, and scopeloop gets as many.
    """
    n, h, w = train_shape
    per_epoch = max(1, n * (h // PATCH) * (w // PATCH))
    return max(1, round(budget_patches / per_epoch))


def standardise(frames: Array) -> tuple[NDArray[np.float32], Array, Array]:
    """Each frame minus its mean, over its standard deviation; and those."""
    x = np.asarray(frames, np.float32)
    mean = x.mean(axis=(1, 2), keepdims=True)
    std = np.maximum(x.std(axis=(1, 2), keepdims=True), 1e-6)
    return (x - mean) / std, mean, std


def run_careamics(
    python: Path,
    train: Array,
    predict: Array,
    epochs: int,
    seed: int,
    timeout_s: float,
) -> tuple[NDArray[np.float32], dict[str, Any]]:
    """Train CAREamics N2V2 on `train` and predict `predict`, in a subprocess.

    Frames are standardised one by one on the way in and mapped back on the
    way out. Raises `RuntimeError` with the end of its log when it fails.
    """
    with tempfile.TemporaryDirectory(prefix="bench_quality_careamics_") as tmp:
        work = Path(tmp)
        (work / "runner.py").write_text(CAREAMICS_RUNNER)
        train_std, _, _ = standardise(train)
        pred_std, mean, std = standardise(predict)
        np.save(work / "train.npy", train_std)
        np.save(work / "predict.npy", pred_std)
        settings = {
            "patch": PATCH,
            "batch_size": CAREAMICS_BATCH,
            "epochs": epochs,
            "seed": seed + 1,  # careamics wants a seed > 0
        }
        (work / "settings.json").write_text(json.dumps(settings))
        log = work / "log.txt"
        started = time.perf_counter()
        with log.open("w") as out:
            proc = subprocess.run(
                [str(python), str(work / "runner.py"), str(work)],
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=timeout_s,
                check=False,
                env={**os.environ, "PYTHONWARNINGS": "ignore"},
            )
        if proc.returncode != 0 or not (work / "result.json").exists():
            tail = log.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"CAREamics exited with {proc.returncode}:\n{tail}")
        info = json.loads((work / "result.json").read_text())
        info["total_s"] = time.perf_counter() - started
        predicted = np.load(work / "predicted.npy") * std + mean
        return predicted.astype(np.float32), info


def careamics_python(option: str | None) -> tuple[Path | None, str]:
    """The interpreter to run CAREamics with, or None and why not."""
    path = Path(option) if option else DEFAULT_CAREAMICS
    if not path.exists():
        return None, f"no CAREamics interpreter at {path} (--careamics-python)"
    probe = subprocess.run(
        [
            str(path),
            "-c",
            "import importlib.metadata as m; print(m.version('careamics'))",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if probe.returncode != 0:
        return None, f"careamics is not installed for {path}"
    return path, f"careamics {probe.stdout.strip()} ({path})"


# -- part 1: denoising -------------------------------------------------------------


@dataclass(frozen=True)
class DenoiseSet:
    """Frames to train on and frames to score, with their references."""

    name: str
    train: NDArray[np.float32]  # (N, Y, X) noisy frames every trained method sees
    noisy: NDArray[np.float32]  # (M, Y, X) frames scored
    clean: NDArray[np.float32]  # (M, Y, X) their noise-free references
    groups: NDArray[np.int64]  # (M,) clip or field of each scored frame
    noise: tuple[NoiseModel, ...]  # (M,) for the variance-stabilising transform
    about: str


def simulated_denoise_set(settings: Settings, seed: int) -> DenoiseSet:
    """`random_clip` clips: train on every noisy frame, score every frame."""
    from scopeloop.models._data import random_clip

    rng = np.random.default_rng(seed)
    size = (settings.sim_size, settings.sim_size)
    clips = [
        random_clip(rng, shape=size, frames=settings.sim_frames)
        for _ in range(settings.sim_clips)
    ]
    noisy = np.concatenate([c.noisy for c in clips]).astype(np.float32)
    clean = np.concatenate([c.clean for c in clips]).astype(np.float32)
    groups = np.repeat(np.arange(len(clips)), settings.sim_frames)
    noise = tuple(
        noise_from_calibration(frame, c.gain_adu_per_e, c.offset_adu)
        for c in clips
        for frame in c.noisy
    )
    return DenoiseSet(
        name="simulated",
        train=noisy,
        noisy=noisy,
        clean=clean,
        groups=groups.astype(np.int64),
        noise=noise,
        about=(
            f"{len(clips)} random_clip(default_rng({seed}), shape={size}, "
            f"frames={settings.sim_frames}); trained on all {len(noisy)} noisy "
            "frames, all scored against clean; VST noise model: the clip's camera "
            "gain and offset, read noise from the darkest 10 % of each frame"
        ),
    )


def fmd_denoise_set(settings: Settings, real: Path) -> DenoiseSet:
    """FMD BPAE nuclei: train on all noisy frames, score frame 0 of each field."""
    folder = real / "fmd-bpae-nuclei"
    n = settings.fmd_fields
    crop = np.s_[: settings.fmd_crop, : settings.fmd_crop]
    noisy = tifffile.imread(folder / "noisy.tif")[:n][(..., *crop)].astype(np.float32)
    clean = tifffile.imread(folder / "clean.tif")[:n][(..., *crop)].astype(np.float32)
    noise = tuple(noise_from_repeats(noisy[f]) for f in range(n))
    shape = "x".join(str(s) for s in noisy.shape[-2:])
    return DenoiseSet(
        name="FMD",
        train=noisy.reshape(-1, *noisy.shape[2:]),
        noisy=noisy[:, 0],
        clean=clean,
        groups=np.arange(n, dtype=np.int64),
        noise=noise,
        about=(
            f"{folder}: {n} fields x {noisy.shape[1]} noisy frames ({shape}), "
            "trained on all of them, frame 0 of each field scored against the "
            "50-frame average; VST noise model fitted to each field's per-pixel "
            "mean and variance over its 16 noisy frames (slope "
            + "/".join(f"{m.slope:.2f}" for m in noise)
            + ")"
        ),
    )


@dataclass
class DenoiseRow:
    """One method's scores on one data set."""

    method: str
    psnr: list[float] = field(default_factory=list)
    ssim: list[float] = field(default_factory=list)
    train_s: float | None = None
    patches: int | None = None
    steps: int | None = None
    note: str = ""
    skipped: str = ""

    @property
    def mean_psnr(self) -> float:
        """Mean PSNR over the scored frames (NaN when skipped)."""
        return statistics.fmean(self.psnr) if self.psnr else float("nan")

    @property
    def mean_ssim(self) -> float:
        """Mean SSIM over the scored frames (NaN when skipped)."""
        return statistics.fmean(self.ssim) if self.ssim else float("nan")


def scored(data: DenoiseSet, row: DenoiseRow, estimate: Array) -> DenoiseRow:
    """Fill `row` with the PSNR and SSIM of every scored frame."""
    for ref, est in zip(data.clean, estimate, strict=True):
        p, s = psnr_ssim(ref, est)
        row.psnr.append(p)
        row.ssim.append(s)
    return row


def grid_rows(
    data: DenoiseSet,
    method: str,
    params: Sequence[float],
    apply: Callable[[int, float], NDArray[np.float32]],
    unit: str,
) -> list[DenoiseRow]:
    """A filter with its parameter chosen per frame on the other clips/fields.

    The second row picks the best parameter for each frame against its own
    reference: an upper bound that no real use can reach.
    """
    outputs = [[apply(i, p) for p in params] for i in range(len(data.noisy))]
    psnr = np.array(
        [
            [psnr_ssim(c, o)[0] for o in outs]
            for c, outs in zip(data.clean, outputs, strict=True)
        ]
    )
    rows = []
    for label, picks in (
        ("held out", held_out_choice(psnr, data.groups)),
        ("oracle", np.argmax(psnr, axis=1)),
    ):
        chosen = [params[k] for k in picks]
        estimate = [outputs[i][k] for i, k in enumerate(picks)]
        row = scored(data, DenoiseRow(f"{method}, {label} {unit}"), estimate)
        row.note = f"{unit} {min(chosen):g}-{max(chosen):g}"
        rows.append(row)
    return rows


def denoise_part(
    data: DenoiseSet,
    models: ModelFiles,
    budget_patches: int,
    careamics: Path | None,
    careamics_why: str,
    seed: int,
    timeout_s: float,
) -> list[DenoiseRow]:
    """Every denoising method on `data`, in table order."""
    from scopeloop.models._denoise import Denoiser, train_denoiser

    rows = [scored(data, DenoiseRow("noisy frame"), data.noisy)]
    rows += grid_rows(
        data,
        "Gaussian",
        GAUSS_SIGMAS,
        lambda i, s: gaussian_filter(data.noisy[i], s),
        "sigma",
    )
    rows += grid_rows(
        data,
        "NLM + VST",
        NLM_H,
        lambda i, h: nlm_vst(data.noisy[i], data.noise[i], h),
        "h",
    )

    row = DenoiseRow("CAREamics N2V2, trained")
    patches = budget_patches
    if careamics is None:
        row.skipped = careamics_why
    else:
        epochs = careamics_epochs(data.train.shape, budget_patches)
        print(
            f"  training CAREamics N2V2 on {data.name}: {epochs} epochs, {load_note()}",
            flush=True,
        )
        try:
            estimate, info = run_careamics(
                careamics, data.train, data.noisy, epochs, seed, timeout_s
            )
        except (RuntimeError, subprocess.TimeoutExpired) as exc:
            row.skipped = f"CAREamics failed: {exc}"
        else:
            scored(data, row, estimate)
            row.train_s, row.patches, row.steps = (
                info["train_s"],
                info["patches"],
                info["steps"],
            )
            patches = info["patches"]
            row.note = f"{info['parameters'] / 1000:.0f}k parameters, {epochs} epochs"
    rows.append(row)

    steps = max(1, round(patches / SCOPELOOP_BATCH))
    print(
        f"  training scopeloop on {data.name}, {steps} steps ({load_note()})",
        flush=True,
    )
    started = time.perf_counter()
    trained = train_denoiser(
        data.train, steps=steps, batch_size=SCOPELOOP_BATCH, patch=PATCH, seed=seed
    )
    row = DenoiseRow("scopeloop, trained", train_s=time.perf_counter() - started)
    scored(data, row, trained(data.noisy))
    row.patches, row.steps = steps * SCOPELOOP_BATCH, steps
    row.note = (
        f"{sum(p.numel() for p in trained.net.parameters()) / 1000:.0f}k parameters"
    )
    rows.append(row)

    row = DenoiseRow("scopeloop, shipped weights")
    try:
        shipped = Denoiser.load(models.denoiser)
    except ScopeloopError as exc:
        row.skipped = f"no shipped weights ({exc})"
    else:
        scored(data, row, shipped(data.noisy))
        row.note = f"sha256 {shipped.sha256[:12]}, not trained here"
    rows.append(row)
    return rows


def print_denoise(data: DenoiseSet, rows: list[DenoiseRow]) -> dict[str, Any]:
    """The table of one data set, its goal line; returns its JSON record."""
    print(f"\nDenoising, {data.name}: {data.about}.")
    table = [
        [
            r.method,
            fmt(r.mean_psnr),
            fmt(r.mean_ssim, 3),
            fmt(min(r.psnr)) if r.psnr else "-",
            str(r.patches or "-"),
            str(r.steps or "-"),
            fmt(r.train_s, 0),
            "skipped, see below" if r.skipped else r.note,
        ]
        for r in rows
    ]
    print_table(
        [
            "method",
            "PSNR dB",
            "SSIM",
            "min PSNR",
            "patches",
            "steps",
            "train s",
            "note",
        ],
        table,
    )
    for r in rows:
        if r.skipped:
            print(f"  {r.method}: {r.skipped}")
    by_name = {r.method: r for r in rows}
    ours = by_name["scopeloop, trained"].mean_psnr
    theirs = by_name["CAREamics N2V2, trained"].mean_psnr
    margin = ours - theirs
    if np.isfinite(margin):
        verdict = "MET" if margin >= GOAL_DB else "MISSED"
        print(
            f"Goal ({data.name}): scopeloop trained - CAREamics N2V2 trained"
            f" >= {GOAL_DB} dB: {margin:+.2f} dB -> {verdict}"
        )
    else:
        verdict = "NOT MEASURED"
        print(f"Goal ({data.name}): not measured (CAREamics row skipped)")
    return {
        "data": data.name,
        "about": data.about,
        "rows": [asdict(r) for r in rows],
        "margin_db": margin,
        "goal": verdict,
    }


# -- instance matching and part 2: labels -------------------------------------------


def match_instances(
    pred: Array, truth: Array, iou: float = 0.5, *, sparse_truth: bool = False
) -> tuple[int, int, int]:
    """(matched pairs, predicted objects, true objects) of two label images.

    Objects match one to one when their intersection over union is at least
    `iou` (>= 0.5, so a match is unique); 0 is background. With
    `sparse_truth` (only some nuclei annotated), predicted objects that
    touch no annotated nucleus are not counted.
    """
    p_ids, p = np.unique(np.asarray(pred).ravel(), return_inverse=True)
    t_ids, t = np.unique(np.asarray(truth).ravel(), return_inverse=True)
    inter = np.bincount(p * t_ids.size + t, minlength=p_ids.size * t_ids.size)
    inter = inter.reshape(p_ids.size, t_ids.size)[p_ids != 0][:, t_ids != 0]
    area_p = np.bincount(p, minlength=p_ids.size)[p_ids != 0]
    area_t = np.bincount(t, minlength=t_ids.size)[t_ids != 0]
    if sparse_truth:
        touching = inter.sum(1) > 0
        inter, area_p = inter[touching], area_p[touching]
    union = area_p[:, None] + area_t[None, :] - inter
    tp = int((inter >= iou * np.maximum(union, 1)).sum()) if inter.size else 0
    return tp, int(area_p.size), int(area_t.size)


@dataclass
class LabelRow:
    """Pooled matching counts of one way of labelling one data set."""

    data: str
    input: str
    tp: int = 0
    n_pred: int = 0
    n_true: int = 0
    per_frame: list[float] = field(default_factory=list)

    def add(self, pred: Array, truth: Array, *, sparse_truth: bool = False) -> float:
        """Match one frame, add its counts; returns the frame's AP."""
        tp, n_pred, n_true = match_instances(pred, truth, sparse_truth=sparse_truth)
        self.tp += tp
        self.n_pred += n_pred
        self.n_true += n_true
        denom = n_pred + n_true - tp
        self.per_frame.append(1.0 if denom == 0 else tp / denom)
        return self.per_frame[-1]

    @property
    def ap(self) -> float:
        """TP / (TP + FP + FN) over all frames."""
        denom = self.n_pred + self.n_true - self.tp
        return 1.0 if denom == 0 else self.tp / denom


def check_against_project(pred: Array, truth: Array, ours: float) -> None:
    """Warn when scopeloop's `average_precision` disagrees with this benchmark's."""
    try:
        from scopeloop.models._labels import average_precision
    except ImportError:
        return
    theirs = float(average_precision(pred, truth, iou=0.5))
    if abs(theirs - ours) > 1e-9:
        print(f"  warning: average_precision {theirs:.4f}, this benchmark {ours:.4f}")


def gowt1_seg_frames(folder: Path, limit: int) -> tuple[list[int], list[bool]]:
    """Gold segmentation frames of GOWT1 and whether each is fully annotated.

    Most frames of `seg_masks.tif` annotate only a few nuclei; a frame counts
    as fully annotated when it has at least 90 % as many objects as the
    tracking markers of `tracks.tif`. `limit` > 0 keeps one full frame and
    `limit - 1` partial ones.
    """
    listed = [int(s) for s in (folder / "seg_frames.txt").read_text().split()]
    masks = tifffile.imread(folder / "seg_masks.tif")
    markers = tifffile.imread(folder / "tracks.tif", key=listed)
    full = [
        np.unique(m).size - 1 >= 0.9 * (np.unique(k).size - 1)
        for m, k in zip(masks, markers, strict=True)
    ]
    keep = list(range(len(listed)))
    if limit:
        whole = [i for i in keep if full[i]][:1]
        keep = sorted(whole + [i for i in keep if not full[i]][: limit - len(whole)])
    return [listed[i] for i in keep], [full[i] for i in keep]


def labels_part(
    settings: Settings, real: Path, seed: int, models: ModelFiles
) -> list[LabelRow]:
    """AP of the shipped segmenter on held-out simulated frames and on GOWT1."""
    from scopeloop.models._data import random_clip
    from scopeloop.models._denoise import Denoiser
    from scopeloop.models._labels import Segmenter
    from scopeloop.worker import FrameInput

    segmenter = Segmenter.load(models.labels)
    denoiser = Denoiser.load(models.denoiser)
    rng = np.random.default_rng(seed)
    size = (settings.label_size, settings.label_size)
    sim = {
        name: LabelRow("simulated", name)
        for name in ("noisy frame", "restored (shipped denoiser)", "clean frame")
    }
    for i in range(settings.label_clips):
        clip = random_clip(rng, shape=size, frames=1, fast_cycle=bool(i % 2))
        truth = clip.labels[0]
        for name, image in (
            ("noisy frame", clip.noisy[0]),
            ("restored (shipped denoiser)", denoiser(clip.noisy[0])),
            ("clean frame", clip.clean[0]),
        ):
            pred = segmenter(image)
            check_against_project(pred, truth, sim[name].add(pred, truth))
    out = list(sim.values())

    folder = real / "gowt1-01"
    frames, full = gowt1_seg_frames(folder, settings.gowt1_seg_frames)
    listed = [int(s) for s in (folder / "seg_frames.txt").read_text().split()]
    masks = tifffile.imread(
        folder / "seg_masks.tif", key=[listed.index(t) for t in frames]
    )
    images = tifffile.imread(folder / "images.tif", key=frames)
    if images.ndim == 2:
        images, masks = images[None], masks[None]
    n_full = sum(full)
    for name, pipeline in (
        ("raw frame", models.pipeline(denoise=False)),
        ("restored (full pipeline)", models.pipeline()),
    ):
        whole = LabelRow(f"GOWT1 {n_full} full frames", name)
        every = LabelRow(f"GOWT1 {len(frames)} frames, sparse", name)
        for k, (t, image) in enumerate(zip(frames, images, strict=True)):
            result = pipeline.process([FrameInput(k, t, image, t_index=0)])[0]
            if result.error is not None or result.labels is None:
                raise RuntimeError(
                    f"pipeline failed on GOWT1 frame {t}: {result.error}"
                )
            every.add(result.labels, masks[k], sparse_truth=True)
            if full[k]:
                whole.add(result.labels, masks[k])
        out.extend([whole, every])
    return out


def print_labels(
    rows: list[LabelRow], settings: Settings, seed: int, models: dict[str, str]
) -> dict[str, Any]:
    """The labels table; returns its JSON record."""
    print(
        f"\nLabels: segmenter {models['labels']}, denoiser {models['denoiser']}; AP"
        " at IoU 0.5 = TP / (TP + FP + FN) pooled over frames (mean per frame"
        f" beside it). Simulated: {settings.label_clips}"
        f" held-out random_clip(default_rng({seed}), shape=({settings.label_size},"
        f" {settings.label_size}), frames=1), fast_cycle alternating (the shipped"
        " segmenter trained on seed 0). GOWT1: the gold segmentation frames of"
        " seg_frames.txt through Pipeline.process (raw: denoiser=False); 'full"
        " frames' have every nucleus annotated, the others only a few, so in the"
        " 'sparse' rows predicted nuclei that touch no annotated one are not"
        " counted."
    )
    table = [
        [
            r.data,
            r.input,
            fmt(r.ap, 3),
            fmt(statistics.fmean(r.per_frame), 3),
            str(r.tp),
            str(r.n_pred - r.tp),
            str(r.n_true - r.tp),
            str(r.n_true),
            str(len(r.per_frame)),
        ]
        for r in rows
    ]
    print_table(
        ["data", "input", "AP@0.5", "mean/frame", "TP", "FP", "FN", "true", "frames"],
        table,
    )
    return {
        "rows": [
            {
                "data": r.data,
                "input": r.input,
                "ap": r.ap,
                "per_frame": r.per_frame,
                "tp": r.tp,
                "n_pred": r.n_pred,
                "n_true": r.n_true,
            }
            for r in rows
        ]
    }


# -- part 3: divisions ---------------------------------------------------------------


@dataclass(frozen=True)
class Event:
    """A division: the frame its daughters are first seen, and where."""

    frame: int
    y: float
    x: float


@dataclass
class DivisionRow:
    """Matching counts of one way of finding divisions on one data set."""

    data: str
    method: str
    tp: int = 0
    n_pred: int = 0
    n_true: int = 0
    seconds: float = 0.0

    def add(
        self,
        pred: Sequence[Event],
        truth: Sequence[Event],
        radius_px: float,
        seconds: float,
    ) -> None:
        """Match the events of one time-lapse and add the counts and time."""
        self.seconds += seconds
        self.tp += match_events(pred, truth, radius_px)
        self.n_pred += len(pred)
        self.n_true += len(truth)

    @property
    def precision(self) -> float:
        """Found divisions that are real (NaN when none were found)."""
        return self.tp / self.n_pred if self.n_pred else float("nan")

    @property
    def recall(self) -> float:
        """Real divisions that were found (NaN when there were none)."""
        return self.tp / self.n_true if self.n_true else float("nan")

    @property
    def f1(self) -> float:
        """Harmonic mean of precision and recall: 2 TP / (found + real)."""
        total = self.n_pred + self.n_true
        return 2 * self.tp / total if total else float("nan")


def match_events(
    pred: Sequence[Event], truth: Sequence[Event], radius_px: float
) -> int:
    """Most one-to-one matches within FRAME_TOLERANCE frames and `radius_px`."""
    if not pred or not truth:
        return 0
    far = 1e6
    cost = np.full((len(pred), len(truth)), far)
    for i, p in enumerate(pred):
        for j, t in enumerate(truth):
            dt = abs(p.frame - t.frame)
            dist = float(np.hypot(p.y - t.y, p.x - t.x))
            if dt <= FRAME_TOLERANCE and dist <= radius_px:
                cost[i, j] = dist / radius_px + dt / (FRAME_TOLERANCE + 1)
    rows, cols = linear_sum_assignment(cost)
    return int((cost[rows, cols] < far).sum())


def measure(labels: Array) -> tuple[NDArray[np.int64], Array, Array, Array]:
    """Ids, centroid rows, centroid columns and areas of a label image."""
    flat = np.asarray(labels).ravel().astype(np.int64)
    area = np.bincount(flat)
    ids = np.flatnonzero(area[1:]) + 1
    rows, cols = np.indices(np.asarray(labels).shape)
    sy = np.bincount(flat, rows.ravel(), minlength=area.size)
    sx = np.bincount(flat, cols.ravel(), minlength=area.size)
    a = area[ids].astype(np.float64)
    return ids, sy[ids] / a, sx[ids] / a, a


class TruthLabels:
    """A label model that answers the ground-truth labels set before each call."""

    sha256 = "ground-truth"

    def __init__(self) -> None:
        self.current: Array = None

    def __call__(self, images: Array) -> Array:
        return np.asarray(self.current, np.uint32)[None]


def pipeline_events(
    pipeline: Any,
    frames: Array,
    position: int,
    truth: TruthLabels | None = None,
    labels: Array = None,
) -> list[Event]:
    """Run `pipeline` over a time-lapse, one frame at a time; its divisions."""
    from scopeloop.worker import FrameInput

    events: list[Event] = []
    for t, image in enumerate(frames):
        if truth is not None:
            truth.current = labels[t]
        out = pipeline.process([FrameInput(position, t, image, t_index=t)])[0]
        if out.error is not None:
            raise RuntimeError(f"pipeline failed on frame {t}: {out.error}")
        events.extend(Event(t, d.y, d.x) for d in out.divisions)
    return events


def tracker_events(clip: Any) -> list[Event]:
    """The tracker alone, fed ground-truth labels and mitotic phases."""
    from scopeloop.worker import Detection, Tracker

    tracker = Tracker()
    events: list[Event] = []
    for t in range(len(clip)):
        view = clip.nuclei[t]
        mitotic = {
            int(i) for i, ph in zip(view.ids, view.phase, strict=True) if ph in MITOTIC
        }
        ids, ys, xs, areas = measure(clip.labels[t])
        detections = [
            Detection(int(i), float(y), float(x), float(a), float(int(i) in mitotic))
            for i, y, x, a in zip(ids, ys, xs, areas, strict=True)
        ]
        _, found = tracker.update(t, detections)
        events.extend(Event(t, d.y, d.x) for d in found)
    return events


def divisions_part(
    settings: Settings,
    real: Path,
    models: ModelFiles,
    cycle_h: float,
    interval_s: float,
    laser_mw: float,
) -> tuple[list[DivisionRow], dict[str, Any]]:
    """Division F1 of the pipeline (and of its parts) on simulations and GOWT1."""
    from scopeloop.models._data import simulate_clip
    from scopeloop.sim import CultureParams, SensorModel
    from scopeloop.worker import Pipeline

    pixel_um = 0.5
    params0 = CultureParams(cycle_h=cycle_h)
    radius = params0.nucleus_diameter_um / pixel_um
    full = models.pipeline()
    truth_labels = TruthLabels()
    oracle = Pipeline(full.denoiser, truth_labels, full.scorer, device="cpu")
    rows = {
        "full": DivisionRow("simulated", "full pipeline"),
        "gt_labels": DivisionRow("simulated", "GT labels + model mitosis score"),
        "tracker": DivisionRow("simulated", "tracker only: GT labels + GT phases"),
    }
    size = (settings.division_size, settings.division_size)
    nuclei = []
    for k, seed in enumerate(settings.division_seeds):
        clip = simulate_clip(
            CultureParams(seed=seed, cycle_h=cycle_h),
            SensorModel(),
            shape=size,
            frames=settings.division_frames,
            interval_s=interval_s,
            pixel_um=pixel_um,
            laser_power_mw=laser_mw,
            exposure_ms=50.0,
        )
        nuclei.append(len(clip.nuclei[0]))
        truth = [Event(d.frame, d.y, d.x) for d in clip.divisions]
        started = time.perf_counter()
        found = pipeline_events(full, clip.noisy, k)
        rows["full"].add(found, truth, radius, time.perf_counter() - started)
        started = time.perf_counter()
        found = pipeline_events(oracle, clip.noisy, k, truth_labels, clip.labels)
        rows["gt_labels"].add(found, truth, radius, time.perf_counter() - started)
        started = time.perf_counter()
        found = tracker_events(clip)
        rows["tracker"].add(found, truth, radius, time.perf_counter() - started)
    about = {
        "sim": (
            f"simulate_clip(CultureParams(seed=s, cycle_h={cycle_h:g}), SensorModel(),"
            f" shape={size}, frames={settings.division_frames},"
            f" interval_s={interval_s:g}, pixel_um={pixel_um},"
            f" laser_power_mw={laser_mw:g}, exposure_ms=50) for s in"
            f" {list(settings.division_seeds)} (other parameters default: nucleus"
            f" {params0.nucleus_diameter_um:g} um, mitosis {params0.mitosis_min:g}"
            f" min); {sum(nuclei)} nuclei in the first frames; match within"
            f" +-{FRAME_TOLERANCE} frames and {radius:.0f} px (one nucleus diameter)"
        )
    }

    gowt1_row, about["gowt1"] = gowt1_divisions(settings, real, full)
    return [*rows.values(), gowt1_row], about


def gowt1_divisions(
    settings: Settings, real: Path, pipeline: Any
) -> tuple[DivisionRow, str]:
    """The full pipeline over GOWT1 against the divisions of man_track.txt.

    A track with a parent starts at a division: each (parent, first frame)
    is one event, placed at the centroid of those daughters' markers.
    """
    folder = real / "gowt1-01"
    first, last = settings.gowt1_frames
    tracks = np.loadtxt(folder / "man_track.txt", dtype=np.int64, ndmin=2)
    starts: dict[tuple[int, int], list[int]] = {}
    for track_id, begin, _, parent in tracks:
        if parent and first < begin < last:
            starts.setdefault((int(parent), int(begin)), []).append(int(track_id))
    markers = tifffile.imread(folder / "tracks.tif", key=range(first, last))
    truth = []
    for (_, begin), daughters in sorted(starts.items(), key=lambda kv: kv[0][1]):
        ys, xs = np.nonzero(np.isin(markers[begin - first], daughters))
        truth.append(Event(begin - first, float(ys.mean()), float(xs.mean())))
    masks = tifffile.imread(folder / "seg_masks.tif")
    areas = np.bincount(masks.ravel())[1:]
    diameter = float(np.median(2 * np.sqrt(areas[areas > 0] / np.pi)))
    images = tifffile.imread(folder / "images.tif", key=range(first, last))
    pipeline.reset()
    row = DivisionRow("GOWT1", "full pipeline")
    started = time.perf_counter()
    found = pipeline_events(pipeline, images, position=0)
    row.add(found, truth, diameter, time.perf_counter() - started)
    about = (
        f"frames {first}-{last - 1}: {len(truth)} division events in"
        " man_track.txt (parent, first frame of daughters): "
        + ", ".join(f"frame {e.frame + first}" for e in truth)
        + f"; match within +-{FRAME_TOLERANCE} frames and {diameter:.0f} px (median"
        " nucleus diameter of seg_masks.tif)"
    )
    return row, about


def print_divisions(
    rows: list[DivisionRow], about: dict[str, str], models: dict[str, str]
) -> dict[str, Any]:
    """The divisions table and its goal; returns its JSON record."""
    names = ", ".join(f"{k} {v}" for k, v in models.items())
    print(
        f"\nDivisions ({names}).\nSimulated: {about['sim']}.\nGOWT1: {about['gowt1']}."
    )
    table = [
        [
            r.data,
            r.method,
            str(r.n_true),
            str(r.n_pred),
            str(r.tp),
            fmt(r.precision, 3),
            fmt(r.recall, 3),
            fmt(r.f1, 3),
            fmt(r.seconds, 0),
        ]
        for r in rows
    ]
    print_table(
        ["data", "method", "true", "found", "TP", "precision", "recall", "F1", "s"],
        table,
    )
    f1 = rows[0].f1
    verdict = "MET" if f1 >= GOAL_F1 else "MISSED"
    print(
        f"Goal: full pipeline F1 >= {GOAL_F1} on simulated data: {f1:.3f} -> {verdict}"
    )
    return {
        "about": about,
        "rows": [
            {
                "data": r.data,
                "method": r.method,
                "true": r.n_true,
                "found": r.n_pred,
                "tp": r.tp,
                "precision": r.precision,
                "recall": r.recall,
                "f1": r.f1,
                "seconds": r.seconds,
            }
            for r in rows
        ],
        "goal": verdict,
    }


# -- main ---------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--parts",
        nargs="+",
        choices=("denoise", "labels", "divisions"),
        default=("denoise", "labels", "divisions"),
        help="which parts to run (default: all)",
    )
    parser.add_argument(
        "--data",
        nargs="+",
        choices=("sim", "fmd"),
        default=("sim", "fmd"),
        help="denoising data sets (default: both)",
    )
    parser.add_argument("--quick", action="store_true", help="smoke run, small sizes")
    parser.add_argument(
        "--budget-patches",
        type=int,
        help="64x64 patches each trained denoiser sees (default 8192; quick 128)",
    )
    parser.add_argument("--sim-size", type=int, help="side of the simulated clips")
    parser.add_argument("--sim-clips", type=int, help="simulated clips to denoise")
    parser.add_argument(
        "--division-seeds", type=int, nargs="+", help="culture seeds of the time-lapses"
    )
    parser.add_argument("--division-frames", type=int, help="frames per time-lapse")
    parser.add_argument(
        "--cycle-h", type=float, default=4.0, help="cell cycle of the time-lapses"
    )
    parser.add_argument(
        "--interval-s", type=float, default=180.0, help="time-lapse interval"
    )
    parser.add_argument(
        "--laser-mw",
        type=float,
        default=2.0,
        help="laser power of the time-lapses (the demo plan's 2 mW x 50 ms)",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of clips and training"
    )
    parser.add_argument(
        "--careamics-python",
        help=f"interpreter with careamics installed (default {DEFAULT_CAREAMICS})",
    )
    parser.add_argument(
        "--careamics-timeout-s", type=float, default=1800.0, help="per CAREamics run"
    )
    parser.add_argument(
        "--real-dir",
        type=Path,
        default=DEFAULT_REAL,
        help=f"fmd-bpae-nuclei and gowt1-01 are here (default {DEFAULT_REAL})",
    )
    for kind in ("denoiser", "labels", "mitosis"):
        parser.add_argument(
            f"--{kind}-weights",
            type=Path,
            help=f"{kind} model file to score (default: the shipped one)",
        )
    parser.add_argument("--json", type=Path, help="also write every figure as JSON")
    return parser.parse_args(argv)


def settings_from(args: argparse.Namespace) -> Settings:
    """Defaults (or quick ones) with the options given on the command line."""
    base = Settings.quick() if args.quick else Settings()
    changes: dict[str, Any] = {}
    for option, name in (
        ("budget_patches", "budget_patches"),
        ("sim_size", "sim_size"),
        ("sim_clips", "sim_clips"),
        ("division_frames", "division_frames"),
    ):
        if getattr(args, option) is not None:
            changes[name] = getattr(args, option)
    if args.division_seeds:
        changes["division_seeds"] = tuple(args.division_seeds)
    return Settings(**{**base.__dict__, **changes})


def main(argv: Sequence[str] | None = None) -> int:
    """Run the chosen parts and print their tables."""
    args = parse_args(argv)
    settings = settings_from(args)
    models = ModelFiles(
        args.denoiser_weights, args.labels_weights, args.mitosis_weights
    )
    import torch

    started = time.perf_counter()
    versions = package_versions(
        ("scopeloop", "numpy", "scipy", "scikit-image", "torch")
    )
    print(
        f"bench_quality: {platform.machine()}, cpus {os.cpu_count()}, torch threads"
        f" {torch.get_num_threads()}, "
        + ", ".join(f"{k} {v}" for k, v in versions.items())
        + f", {load_note()}"
        + (" (quick)" if args.quick else "")
    )
    record: dict[str, Any] = {"versions": versions, "settings": settings.__dict__}

    if "denoise" in args.parts:
        python, why = careamics_python(args.careamics_python)
        print(
            f"\nTrained denoisers: the same noisy frames and the same number of"
            f" {PATCH}x{PATCH} patches (about {settings.budget_patches}: whole"
            f" CAREamics epochs at batch {CAREAMICS_BATCH}, counted; scopeloop as many"
            " at batch"
            f" {SCOPELOOP_BATCH}). CAREamics: {why}."
        )
        record["denoise"] = []
        sets: list[Callable[[], DenoiseSet]] = []
        if "sim" in args.data:
            sets.append(lambda: simulated_denoise_set(settings, args.seed))
        if "fmd" in args.data:
            sets.append(lambda: fmd_denoise_set(settings, args.real_dir))
        for make in sets:
            data = make()
            rows = denoise_part(
                data,
                models,
                settings.budget_patches,
                python,
                why,
                args.seed,
                args.careamics_timeout_s,
            )
            record["denoise"].append(print_denoise(data, rows))

    if "labels" in args.parts:
        label_seed = args.seed + 1000
        try:
            rows_l = labels_part(settings, args.real_dir, label_seed, models)
        except ScopeloopError as exc:
            print(f"\nLabels: skipped, a model could not be loaded: {exc}")
        else:
            record["labels"] = print_labels(
                rows_l, settings, label_seed, models.describe()
            )

    if "divisions" in args.parts:
        try:
            rows_d, about = divisions_part(
                settings,
                args.real_dir,
                models,
                args.cycle_h,
                args.interval_s,
                args.laser_mw,
            )
        except ScopeloopError as exc:
            print(f"\nDivisions: skipped, a model could not be loaded: {exc}")
        else:
            record["divisions"] = print_divisions(rows_d, about, models.describe())

    total = time.perf_counter() - started
    print(f"\ntotal {total:.0f} s, {load_note()}")
    if args.json:
        record["total_s"] = total
        args.json.write_text(json.dumps(record, indent=1, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
