"""Batched image preparation on the training device: augment, normalize, resize, lay out.

Images stay uint8 NHWC until a batch is drawn; everything after that is a handful of tensor
operations on the whole batch (the public baseline resized each image with PIL on the CPU).
An epoch's random shifts and flips are drawn once, as pixel index tables on the device, so a
training step never waits for the host. Shifts are in output pixels (at `image_size`): a
batch that is resized is shifted after the resize, so `crop_padding: 4` moves a CIFAR image
by at most 4 of its 224 pixels, as the public baseline's crop after its resize does.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Augmentation:
    """Output-pixel rows and columns (in the padded image) for each example of an epoch.

    A random crop after padding with black is an integer shift; a flip reverses the columns.
    """

    rows: torch.Tensor  # (n, h) int64
    cols: torch.Tensor  # (n, w) int64

    def __getitem__(self, batch: slice) -> Augmentation:
        return Augmentation(self.rows[batch], self.cols[batch])


class BatchTransform:
    """uint8 NHWC batch -> normalized float batch at `image_size` pixels.

    The result is NCHW-contiguous, or channels_last when `channels_last` is set, so the
    layout switch means the same for batches as for the model.
    """

    def __init__(
        self,
        image_size: int,
        mean: list[float],
        std: list[float],
        crop_padding: int = 0,
        flip: bool = False,
        channels_last: bool = False,
        device: torch.device | str = "cpu",
    ) -> None:
        self.image_size = int(image_size)
        self.mean = torch.tensor(mean, dtype=torch.float32)
        self.std = torch.tensor(std, dtype=torch.float32)
        self.crop_padding = int(crop_padding)
        self.flip = bool(flip)
        self.channels_last = bool(channels_last)
        self._affine: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}
        self.affine(torch.device(device))

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format

    def affine(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Scale and shift mapping uint8 pixels to normalized values, made once per device."""
        if device not in self._affine:
            scale = 1.0 / (255.0 * self.std)
            shift = -self.mean / self.std
            self._affine[device] = (
                scale.view(1, -1, 1, 1).to(device),
                shift.view(1, -1, 1, 1).to(device),
            )
        return self._affine[device]

    def draw(
        self, num: int, generator: torch.Generator, device: torch.device
    ) -> Augmentation | None:
        """One epoch's shifts and flips at `image_size`, drawn on the host from the seeded
        generator (so they are the same on every device) and copied to `device` once."""
        if self.crop_padding == 0 and not self.flip:
            return None
        p, size = self.crop_padding, self.image_size
        rows = torch.arange(size).expand(num, size)
        cols = torch.arange(size).expand(num, size)
        if p > 0:
            shifts = torch.randint(-p, p + 1, (num, 2), generator=generator)
            rows = rows + p + shifts[:, :1]
            cols = cols + p + shifts[:, 1:]
        if self.flip:
            mirror = (torch.rand(num, generator=generator) < 0.5).view(num, 1)
            cols = torch.where(mirror, cols.flip(1), cols)
        # a copy from pageable memory is staged before it returns, so non_blocking is safe here
        to = {"device": device, "non_blocking": True}
        return Augmentation(rows.contiguous().to(**to), cols.contiguous().to(**to))

    def __call__(
        self, images: torch.Tensor, augmentation: Augmentation | None = None
    ) -> torch.Tensor:
        """Prepare a batch; `augmentation` holds this batch's slice of the epoch's draws."""
        resize = tuple(images.shape[1:3]) != (self.image_size, self.image_size)
        if augmentation is not None and not resize:
            images = self.augment(images, augmentation)  # on uint8: 4x less to move
        # NHWC -> NCHW is a view with channels_last strides; make the layout what was asked
        # while the data is still uint8 (4x cheaper than after the conversion)
        x = images.permute(0, 3, 1, 2).contiguous(memory_format=self.memory_format)
        # normalize at the source resolution: bilinear weights sum to one, so this commutes
        # with the resize, which then makes the one large tensor
        scale, shift = self.affine(x.device)
        x = torch.addcmul(shift, x, scale)
        if resize:
            x = F.interpolate(
                x, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False
            )
            if augmentation is not None:
                # padded with the value black normalizes to, as black pads the uint8 case
                black = shift.view(-1)
                x = self.augment(x.permute(0, 2, 3, 1), augmentation, black).permute(0, 3, 1, 2)
        return x.contiguous(memory_format=self.memory_format)

    def augment(
        self, images: torch.Tensor, augmentation: Augmentation, fill: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Crop and flip an NHWC batch with one gather from its padded copy: padded with zeros
        (black uint8 pixels), or with `fill`, one value per channel."""
        p = self.crop_padding
        if p > 0 and fill is None:
            padded = F.pad(images, (0, 0, p, p, p, p))
        elif p > 0:
            n, h, w, c = images.shape
            padded = fill.view(1, 1, 1, c).expand(n, h + 2 * p, w + 2 * p, c).clone()
            padded[:, p : p + h, p : p + w] = images
        else:
            padded = images
        n = images.shape[0]
        batch = torch.arange(n, device=images.device).view(n, 1, 1)
        return padded[batch, augmentation.rows.view(n, -1, 1), augmentation.cols.view(n, 1, -1)]
