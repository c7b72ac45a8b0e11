"""Where the networks run."""

from __future__ import annotations

import torch

from scopeloop.errors import ConfigError

__all__ = ["pick_device"]


def pick_device(name: str | torch.device = "auto") -> torch.device:
    """The torch device for `name`: 'auto' (a GPU when there is one), 'cpu', 'cuda'...

    Raises `ConfigError` when a GPU is asked for and none is available.
    """
    if isinstance(name, torch.device):
        return name
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ConfigError(
            f"--device {name!r} is not a device name (use auto, cpu, cuda or cuda:N)"
        ) from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {name!r}: no CUDA GPU is available here")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"--device {name!r}: no Apple GPU is available here")
    return device
