"""Batched image preparation on the training device: scale, augment, resize, normalize.

Images stay uint8 NHWC until a batch is drawn; everything after that is a handful of tensor
operations on the whole batch (the public baseline resized each image with PIL on the CPU).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


class BatchTransform:
    """uint8 NHWC batch -> normalized float NCHW batch at `image_size` pixels."""

    def __init__(
        self,
        image_size: int,
        mean: list[float],
        std: list[float],
        crop_padding: int = 0,
        flip: bool = False,
        channels_last: bool = False,
    ) -> None:
        self.image_size = int(image_size)
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
        self.crop_padding = int(crop_padding)
        self.flip = bool(flip)
        self.channels_last = channels_last

    def __call__(
        self, images: torch.Tensor, train: bool, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        x = images.permute(0, 3, 1, 2).float().div_(255.0)
        if train:
            x = self.augment(x, generator)
        if x.shape[-1] != self.image_size or x.shape[-2] != self.image_size:
            x = F.interpolate(
                x, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False
            )
        mean, std = self.mean.to(x.device), self.std.to(x.device)
        x = (x - mean) / std
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def augment(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """Random crop after zero padding, as integer shifts of the whole batch at once."""
        n, _, h, w = x.shape
        if self.crop_padding > 0:
            p = self.crop_padding
            shifts = torch.randint(-p, p + 1, (n, 2), generator=generator).to(x.device)
            padded = F.pad(x, (p, p, p, p))
            rows = (torch.arange(h, device=x.device).view(1, h) + p + shifts[:, :1]).view(
                n, 1, h, 1
            )
            cols = (torch.arange(w, device=x.device).view(1, w) + p + shifts[:, 1:]).view(
                n, 1, 1, w
            )
            batch = torch.arange(n, device=x.device).view(n, 1, 1, 1)
            channel = torch.arange(x.shape[1], device=x.device).view(1, -1, 1, 1)
            x = padded[batch, channel, rows, cols]
        if self.flip:
            mirror = (torch.rand(n, generator=generator) < 0.5).to(x.device).view(n, 1, 1, 1)
            x = torch.where(mirror, x.flip(3), x)
        return x
