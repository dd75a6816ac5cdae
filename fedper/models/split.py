"""The base/head split every model is built around; the only place that knows which is which.

A model is a `ModelSplit`: `base` (the first layers, shared by FedPer) followed by `head`
(the last `num_head_layers` layers, personal). Everything else, what a client sends, what the
server averages, what is saved on disk, asks the split through `part_keys`, `state_of` and
`load_keys`.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import torch
from omegaconf import DictConfig
from torch import nn

from fedper.checks import check_range, is_whole
from fedper.errors import ConfigError

PARTS = ("base", "head")


class ModelSplit(nn.Module):
    """A network cut into a shared base and a personal head.

    Subclasses set `name`, `label` and `max_head_layers` and implement `build(num_classes,
    num_head_layers, **options)` returning the two modules; that is all a new model needs.
    """

    name: str = ""
    label: str = ""  # display name in figures and tables
    max_head_layers: int = 1
    # how many times the network halves an image's side: its last feature maps are
    # ceil(image_size / total_stride) wide (None: not known)
    total_stride: int | None = None

    @classmethod
    def check(cls, cfg: DictConfig) -> None:
        """The settings that depend on the model: how many head layers it can have, and a batch
        its BatchNorm layers can train on."""
        check_range("model.num_head_layers", cfg.model.num_head_layers, 1, cls.max_head_layers,
                    f" for model_name={cls.name}")  # fmt: skip
        size, stride = cfg.dataset.image_size, cls.total_stride
        # BatchNorm needs more than one value per channel: with one image, maps bigger than 1x1
        if cfg.batch_size == 1 and stride and is_whole(size) and size <= stride:
            raise ConfigError(
                f"batch_size=1 cannot train model_name={cls.name} at dataset.image_size={size}: "
                "its last BatchNorm layers see 1x1 maps and need 2 examples per batch: use "
                f"batch_size>=2 (or dataset.image_size>={stride + 1})"
            )

    def __init__(self, num_classes: int, num_head_layers: int, **options) -> None:
        super().__init__()
        if not 1 <= num_head_layers <= self.max_head_layers:
            raise ValueError(
                f"model.num_head_layers={num_head_layers} is out of range for {self.name}: "
                f"use 1-{self.max_head_layers}"
            )
        self.num_classes = num_classes
        self.num_head_layers = num_head_layers
        self.base, self.head = self.build(num_classes, num_head_layers, **options)

    def build(
        self, num_classes: int, num_head_layers: int, **options
    ) -> tuple[nn.Module, nn.Module]:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.base(x))

    def part_keys(self, parts: tuple[str, ...]) -> list[str]:
        """State-dict keys (parameters and buffers) of the named parts, in model order."""
        prefixes = tuple(f"{part}." for part in parts)
        return [key for key in self.state_dict() if key.startswith(prefixes)]

    def batchnorm_keys(self, parts: tuple[str, ...] = PARTS, affine: bool = True) -> set[str]:
        """Keys of the BatchNorm layers in the named parts: running statistics and the batch
        counter, plus the affine weight and bias when `affine`."""
        kinds = ("running_mean", "running_var", "num_batches_tracked")
        kinds += ("weight", "bias") if affine else ()
        keys = set()
        for part in parts:
            for name, module in getattr(self, part).named_modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    prefix = f"{part}.{name}." if name else f"{part}."
                    keys.update(prefix + kind for kind in kinds)
        return keys & set(self.state_dict())

    def state_of(self, keys: list[str]) -> OrderedDict[str, torch.Tensor]:
        """Detached CPU copies of these parameters and buffers, in the order given."""
        state = self.state_dict()
        return OrderedDict((k, state[k].detach().cpu().clone()) for k in keys)

    def part_state(self, parts: tuple[str, ...]) -> OrderedDict[str, torch.Tensor]:
        """Detached copies of the named parts' parameters and buffers."""
        return self.state_of(self.part_keys(parts))

    def load_keys(self, state: dict[str, torch.Tensor | np.ndarray], keys: list[str]) -> None:
        """Load exactly these keys; a missing, extra or misshapen entry is an error."""
        expected = self.state_dict()
        wanted = set(keys)
        if set(state) != wanted:
            missing = sorted(wanted - set(state))
            extra = sorted(set(state) - wanted)
            raise ValueError(f"missing {missing[:3]}, extra {extra[:3]}")
        with torch.no_grad():
            for key, value in state.items():
                tensor = torch.as_tensor(value)
                if tuple(tensor.shape) != tuple(expected[key].shape):
                    raise ValueError(
                        f"{key}: shape {tuple(tensor.shape)} does not fit {tuple(expected[key].shape)}"
                    )
                expected[key].copy_(tensor)

    def freeze(self, part: str) -> None:
        """Stop gradients through one part (fine-tuning a head on a fixed base)."""
        getattr(self, part).requires_grad_(False)

    def unfreeze(self) -> None:
        self.requires_grad_(True)
