"""Torch models of the worker: denoiser, nucleus labels, mitosis score.

Each model loads from a file (`Denoiser.load(path)`, ...; no path: the
weights shipped in `weights/`, made by ``scopeloop train``) and is called on
numpy arrays. The controller never imports this package.
"""

from ._data import ClipDivision, SimClip, random_clip, simulate_clip
from ._denoise import Denoiser, train_denoiser, train_shipped_denoiser
from ._device import pick_device
from ._labels import (
    Segmenter,
    average_precision,
    train_segmenter,
    train_shipped_segmenter,
)
from ._mitosis import MitosisScorer, train_scorer, train_shipped_scorer
from ._weights import load_model_file, save_model_file, shipped_model_path

__all__ = [
    "ClipDivision",
    "Denoiser",
    "MitosisScorer",
    "Segmenter",
    "SimClip",
    "average_precision",
    "load_model_file",
    "pick_device",
    "random_clip",
    "save_model_file",
    "shipped_model_path",
    "simulate_clip",
    "train_denoiser",
    "train_scorer",
    "train_segmenter",
    "train_shipped_denoiser",
    "train_shipped_scorer",
    "train_shipped_segmenter",
]
