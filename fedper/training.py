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

from fedper.data.transforms import BatchTransform


@dataclass
class TrainSettings:
    epochs: int
    batch_size: int
    learning_rate: float
    momentum: float = 0.9
    weight_decay: float = 0.0
    autocast_dtype: torch.dtype | None = None  # mixed precision (bf16); None = fp32


def batch_slices(num_examples: int, batch_size: int, order: torch.Tensor) -> Iterator[torch.Tensor]:
    """Index batches over `order`; a last batch of a single example joins the one before.

    BatchNorm cannot normalize one example when the feature maps are 1x1 (MobileNet-v1 at
    32 px), so such a batch would crash training.
    """
    starts = list(range(0, num_examples, batch_size))
    if len(starts) > 1 and num_examples - starts[-1] == 1:
        starts.pop()
    for i, start in enumerate(starts):
        end = starts[i + 1] if i + 1 < len(starts) else num_examples
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
    """
    device = model_device(model)
    params = [p for p in (parameters or model.parameters()) if p.requires_grad]
    optimizer = torch.optim.SGD(
        params,
        lr=settings.learning_rate,
        momentum=settings.momentum,
        weight_decay=settings.weight_decay,
    )
    model.train()
    if frozen is not None:
        frozen.eval()
    total_loss, seen = 0.0, 0
    num = len(labels)
    if num < 2:
        raise ValueError(f"cannot train BatchNorm layers on {num} example(s)")
    for _ in range(settings.epochs):
        order = torch.randperm(num, generator=generator).to(images.device)
        for idx in batch_slices(num, settings.batch_size, order):
            # uint8 crosses to the device (4x less than float), then it is prepared there
            batch = images[idx].to(device, non_blocking=True)
            x = transform(batch, train=True, generator=generator)
            y = labels[idx].to(device, non_blocking=True)
            with autocast(device, settings.autocast_dtype):
                loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total_loss += loss.item() * len(idx)
            seen += len(idx)
    return {"loss": total_loss / max(seen, 1), "num_examples": num}


@torch.no_grad()
def evaluate(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    transform: BatchTransform,
    batch_size: int,
    autocast_dtype: torch.dtype | None = None,
) -> dict[str, float]:
    """Accuracy and mean cross-entropy per example, with BatchNorm in eval mode."""
    device = model_device(model)
    model.eval()
    loss_sum, correct = 0.0, 0
    num = len(labels)
    for start in range(0, num, batch_size):
        x = transform(images[start : start + batch_size].to(device), train=False)
        y = labels[start : start + batch_size].to(device)
        with autocast(device, autocast_dtype):
            logits = model(x)
        loss_sum += F.cross_entropy(logits.float(), y, reduction="sum").item()
        correct += (logits.argmax(1) == y).sum().item()
    return {
        "accuracy": correct / num if num else 0.0,
        "loss": loss_sum / num if num else 0.0,
        "num_examples": num,
    }
