"""Model files: a torch state dict with what is needed to rebuild the model.

A model file is a plain dictionary saved with `torch.save` and read back with
``torch.load(..., weights_only=True)`` (no pickled code runs on load)::

    {"format": "scopeloop-model", "version": 1, "kind": "denoiser",
     "config": {...}, "state_dict": {...}, "meta": {...}}

`config` holds the constructor arguments and pre-processing settings (plain
numbers, strings, booleans, lists); `meta` says how the weights were made
(command, data, steps, seed, date). Every run records the file's sha256.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from scopeloop.errors import ConfigError
from scopeloop.storage import file_sha256

__all__ = [
    "MODEL_FORMAT_VERSION",
    "ModelFile",
    "file_sha256",
    "load_model_file",
    "save_model_file",
    "shipped_model_path",
]

MODEL_FORMAT_VERSION = 1
_WEIGHTS = Path(__file__).parent / "weights"


@dataclass(frozen=True)
class ModelFile:
    """The contents of a model file, and where it came from."""

    kind: str
    config: dict[str, Any]
    state_dict: dict[str, torch.Tensor]
    meta: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None
    sha256: str = ""


def shipped_model_path(kind: str) -> Path:
    """Path of the weights the package ships for `kind` (e.g. 'denoiser')."""
    return _WEIGHTS / f"{kind}.pt"


def save_model_file(
    path: Path,
    kind: str,
    config: dict[str, Any],
    module: torch.nn.Module,
    meta: dict[str, Any] | None = None,
) -> str:
    """Write `module`'s weights to `path`; returns the file's sha256."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}
    torch.save(
        {
            "format": "scopeloop-model",
            "version": MODEL_FORMAT_VERSION,
            "kind": kind,
            "config": config,
            "state_dict": state,
            "meta": meta or {},
        },
        path,
    )
    return file_sha256(path)


def load_model_file(path: Path, kind: str) -> ModelFile:
    """Read a model file written by `save_model_file`, checking its kind.

    Raises `ConfigError` naming the file when it is missing, unreadable, not a
    scopeloop model, of another version or of another kind.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: model file not found")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ConfigError(f"{path}: not a readable model file ({exc})") from exc
    if not isinstance(data, dict) or data.get("format") != "scopeloop-model":
        raise ConfigError(f"{path}: not a scopeloop model file")
    if data.get("version") != MODEL_FORMAT_VERSION:
        raise ConfigError(
            f"{path}: model file version {data.get('version')!r} is not supported "
            f"(this scopeloop reads version {MODEL_FORMAT_VERSION})"
        )
    if data.get("kind") != kind:
        raise ConfigError(
            f"{path}: holds a {data.get('kind')!r} model, expected {kind!r}"
        )
    return ModelFile(
        kind=kind,
        config=dict(data["config"]),
        state_dict=dict(data["state_dict"]),
        meta=dict(data.get("meta", {})),
        path=path,
        sha256=file_sha256(path),
    )
