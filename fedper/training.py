"""The model manager: local training and evaluation as plain functions.

Both set train()/eval() themselves, move every batch to the model's device and count
examples, not batches (the public baseline did neither).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.sgd import sgd

from fedper.data.transforms import BatchTransform


@dataclass
class TrainSettings:
    epochs: int
    batch_size: int
    learning_rate: float
    momentum: float = 0.9
    weight_decay: float = 0.0
    autocast_dtype: torch.dtype | None = None  # mixed precision (bf16); None = fp32


def batch_bounds(num_examples: int, batch_size: int) -> list[tuple[int, int]]:
    """(start, end) of each batch; a last batch of a single example joins the one before.

    BatchNorm cannot normalize one example when the feature maps are 1x1 (MobileNet-v1 at
    32 px), so such a batch would crash training.
    """
    starts = list(range(0, num_examples, batch_size))
    if not starts:
        return []
    if len(starts) > 1 and num_examples - starts[-1] == 1:
        starts.pop()
    return list(zip(starts, [*starts[1:], num_examples], strict=True))


def batch_slices(num_examples: int, batch_size: int, order: torch.Tensor) -> Iterator[torch.Tensor]:
    """Index batches over `order`, as `batch_bounds` cuts them."""
    for start, end in batch_bounds(num_examples, batch_size):
        yield order[start:end]


def model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def autocast(device: torch.device, dtype: torch.dtype | None):
    """Mixed precision on the model's device type, or nothing when `dtype` is None."""
    if dtype is None:
        return nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def train(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    transform: BatchTransform,
    settings: TrainSettings,
    generator: torch.Generator,
    parameters: list[nn.Parameter] | None = None,
    frozen: nn.Module | None = None,
) -> dict[str, float]:
    """SGD over the client's uint8 images; returns mean loss per example and the count.

    `parameters` restricts the update (fine-tuning a head); by default all of them train.
    `frozen` stays in eval mode, so its BatchNorm statistics do not move either.
    The host waits for the device once per call, for the summed loss. Shuffling and
    augmentation are drawn on the host from `generator`, so they are the same on any device.
    """
    device = model_device(model)
    params = [p for p in (parameters or model.parameters()) if p.requires_grad]
    optimizer = SGD(params, settings)
    model.train()
    if frozen is not None:
        frozen.eval()
    num = len(labels)
    if num < 2:
        raise ValueError(f"cannot train BatchNorm layers on {num} example(s)")
    # float64 on the device, so the sum matches a host-side float sum as closely as before
    total_loss = torch.zeros((), dtype=torch.float64, device=device)
    for _ in range(settings.epochs):
        order = torch.randperm(num, generator=generator).to(images.device, non_blocking=True)
        augmentation = transform.draw(num, generator, device)
        for start, end in batch_bounds(num, settings.batch_size):
            idx = order[start:end]
            # uint8 crosses to the device (4x less than float), then it is prepared there
            batch = images[idx].to(device, non_blocking=True)
            x = transform(batch, augmentation[start:end] if augmentation is not None else None)
            y = labels[idx].to(device, non_blocking=True)
            with autocast(device, settings.autocast_dtype):
                loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total_loss += loss.detach().double() * (end - start)
    seen = num * settings.epochs
    return {"loss": total_loss.item() / seen, "num_examples": num}


class SGD:
    """torch's SGD (momentum, weight decay) through its functional form, `torch.optim.sgd.sgd`.

    The same update as `torch.optim.SGD`, without the Optimizer class: its first use in a
    process imports torch._dynamo (about a second), which every fresh ClientApp process of
    Flower's Deployment Engine would pay on every training message.
    """

    def __init__(self, params: list[nn.Parameter], settings: TrainSettings) -> None:
        self.params = params
        self.settings = settings
        self.momentum_buffers: list[torch.Tensor | None] = [None] * len(params)

    def zero_grad(self) -> None:
        for param in self.params:
            param.grad = None

    @torch.no_grad()
    def step(self) -> None:
        live = [i for i, p in enumerate(self.params) if p.grad is not None]
        buffers = [self.momentum_buffers[i] for i in live]
        sgd(
            [self.params[i] for i in live],
            [self.params[i].grad for i in live],
            buffers,
            weight_decay=self.settings.weight_decay,
            momentum=self.settings.momentum,
            lr=self.settings.learning_rate,
            dampening=0.0,
            nesterov=False,
            maximize=False,
        )
        for i, buffer in zip(live, buffers, strict=True):  # sgd fills new buffers in place
            self.momentum_buffers[i] = buffer


@torch.no_grad()
def evaluate(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    transform: BatchTransform,
    batch_size: int,
    autocast_dtype: torch.dtype | None = None,
) -> dict[str, float]:
    """Accuracy and mean cross-entropy per example, with BatchNorm in eval mode.

    Sums stay on the device; the host waits once, at the end.
    """
    device = model_device(model)
    model.eval()
    num = len(labels)
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    for start in range(0, num, batch_size):
        x = transform(images[start : start + batch_size].to(device, non_blocking=True))
        y = labels[start : start + batch_size].to(device, non_blocking=True)
        with autocast(device, autocast_dtype):
            logits = model(x)
        loss_sum += F.cross_entropy(logits.float(), y, reduction="sum").double()
        correct += (logits.argmax(1) == y).sum()
    if not num:
        return {"accuracy": 0.0, "loss": 0.0, "num_examples": 0}
    loss_sum, correct = torch.stack([loss_sum, correct.double()]).tolist()
    return {"accuracy": correct / num, "loss": loss_sum / num, "num_examples": num}
