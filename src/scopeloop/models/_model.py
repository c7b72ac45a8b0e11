"""What the three models share: their model file, device and inference copy.

`TorchModel` keeps where a model's weights came from (`path`, `sha256`,
`meta`), loads and saves its model file (see `scopeloop.models._weights`) and
holds two networks: the one that was trained and is saved, and a copy for
inference on `device` with its batch norms folded into the convolutions.
The helpers below are the training and layer code the models have in common.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Self, TypeVar

import numpy as np
import torch
from torch import nn

from scopeloop.models._weights import (
    ModelFile,
    load_model_file,
    save_model_file,
    shipped_model_path,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Sized

__all__ = [
    "TorchModel",
    "config_from_dict",
    "conv_bn_relu",
    "fit",
    "fold_batchnorm",
    "inference_copy",
    "start_training",
    "training_meta",
]

ConfigT = TypeVar("ConfigT")


def conv_bn_relu(cin: int, cout: int) -> nn.Sequential:
    """3 x 3 convolution without bias, batch norm, ReLU."""
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


def fold_batchnorm(module: nn.Module) -> nn.Module:
    """Fold every Conv2d -> BatchNorm2d pair of `Sequential`s into the conv.

    For inference only (the batch norms must be in eval mode); the module is
    changed in place and returned, and comes back as it was without batch
    norms. About a third less time per forward pass for the small networks
    used here.
    """
    for seq in list(module.modules()):
        if not isinstance(seq, nn.Sequential):
            continue
        for i in range(len(seq) - 1):
            conv, bn = seq[i], seq[i + 1]
            if not (isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d)):
                continue
            assert bn.running_mean is not None and bn.running_var is not None
            scale = bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps)
            bias = (
                conv.bias.detach() if conv.bias is not None else torch.zeros_like(scale)
            )
            fused = nn.Conv2d(
                conv.in_channels,
                conv.out_channels,
                conv.kernel_size,  # type: ignore[arg-type]
                stride=conv.stride,  # type: ignore[arg-type]
                padding=conv.padding,  # type: ignore[arg-type]
                bias=True,
            )
            with torch.no_grad():
                fused.weight.copy_(conv.weight * scale[:, None, None, None])
                assert fused.bias is not None
                fused.bias.copy_((bias - bn.running_mean) * scale + bn.bias.detach())
            seq[i] = fused
            seq[i + 1] = nn.Identity()
    return module


def inference_copy(net: nn.Module, device: torch.device) -> nn.Module:
    """A copy of `net` for inference on `device`.

    In eval mode, batch norms folded, channels-last and without gradients;
    `net` itself is left as it is.
    """
    out = fold_batchnorm(copy.deepcopy(net).eval()).to(device)
    out.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    for p in out.parameters():
        p.requires_grad_(False)
    return out


def config_from_dict(config_type: type[ConfigT], raw: dict[str, Any]) -> ConfigT:
    """A dataclass config from a model file's plain values (lists as tuples)."""
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()}
    return config_type(**values)


class TorchModel(Generic[ConfigT]):
    """A network with its configuration and the model file it comes from.

    `self._train_net` is what was trained (and what `save` writes); calls
    run `self._net`, its `inference_copy` on `device`. Subclasses set `kind`
    and give their configuration's plain values in `_config_dict`; a
    dataclass configuration is read back by `_from_file` through
    `config_type` and `net_type` (``net_type(config)`` builds the network).
    """

    kind: ClassVar[str]
    #: The configuration's and the network's classes, for `_from_file`.
    config_type: ClassVar[type[Any]]
    net_type: ClassVar[type[nn.Module]]

    def __init__(
        self,
        net: nn.Module,
        config: ConfigT,
        *,
        sha256: str = "",
        path: Path | None = None,
        meta: dict[str, Any] | None = None,
        device: str | torch.device = "cpu",
    ) -> None:
        self.config = config
        self.sha256 = sha256
        self.path = path
        self.meta: dict[str, Any] = dict(meta or {})
        self.device = torch.device(device)
        self._train_net = net.eval()
        self._net = inference_copy(net, self.device)

    @classmethod
    def load(cls, path: Path | None = None, device: str | torch.device = "cpu") -> Self:
        """Read a model file of this model's `kind` (None: the shipped weights).

        Raises `ConfigError` naming the file when it is missing, unreadable or
        of another kind.
        """
        path = shipped_model_path(cls.kind) if path is None else Path(path)
        return cls._from_file(load_model_file(path, cls.kind), device)

    @classmethod
    def _from_file(cls, model: ModelFile, device: str | torch.device) -> Self:
        """Rebuild from a read file whose config is a dataclass's values."""
        config = config_from_dict(cls.config_type, model.config)
        net = cls.net_type(config)
        net.load_state_dict(model.state_dict)
        return cls(
            net,
            config,
            sha256=model.sha256,
            path=model.path,
            meta=model.meta,
            device=device,
        )

    def _config_dict(self) -> dict[str, Any]:
        raise NotImplementedError

    def save(self, path: Path, meta: dict[str, Any] | None = None) -> str:
        """Write the model to `path` with `meta` (None: `self.meta`).

        Returns the file's sha256, also kept in `sha256`.
        """
        self.sha256 = save_model_file(
            Path(path),
            self.kind,
            self._config_dict(),
            self._train_net,
            meta if meta is not None else self.meta,
        )
        self.path = Path(path)
        return self.sha256


def fit(
    net: nn.Module,
    loss_at: Callable[[int], torch.Tensor],
    *,
    steps: int,
    lr: float,
    progress: Callable[[int, float], None] | None = None,
) -> None:
    """Train `net` for `steps` AdamW steps on a one-cycle learning rate.

    `loss_at(step)` draws a batch and returns its loss; `progress(step,
    loss)` is called every 50 steps and at the last. `net` is left in eval
    mode.
    """
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    net.train()
    for step in range(steps):
        loss = loss_at(step)
        opt.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        opt.step()
        sched.step()
        if progress is not None and (step % 50 == 0 or step == steps - 1):
            progress(step, loss.item())
    net.eval()


def start_training(
    name: str, clips: Sized, restored_p: float, seed: int
) -> np.random.Generator:
    """Check a trainer's clips and `restored_p`, seed torch; the numpy generator.

    Raises ValueError naming the trainer `name` without clips, and for a
    `restored_p` outside [0, 1).
    """
    if not clips:
        raise ValueError(f"{name} needs at least one clip")
    if not 0.0 <= restored_p < 1.0:
        raise ValueError(f"restored_p must be in [0, 1), got {restored_p}")
    torch.manual_seed(seed)
    return np.random.default_rng(seed)


def training_meta(started: float, **fields: Any) -> dict[str, Any]:
    """A shipped model's `meta`: `fields`, then torch, threads, time and date.

    `started` is the `time.perf_counter()` at the start of the training.
    """
    return {
        **fields,
        "torch": str(torch.__version__),
        "threads": torch.get_num_threads(),
        "train_s": round(time.perf_counter() - started, 1),
        "date": time.strftime("%Y-%m-%d"),
    }
