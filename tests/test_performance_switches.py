"""The performance switches from the config to a training step, forced on the CPU.

The config pins `client_device=cpu`: with `auto` a CUDA machine would train on the GPU and
these tests would silently stop exercising the CPU path they are about.
"""

from __future__ import annotations

import pytest
import torch
from helpers import make_config

from fedper.data.transforms import BatchTransform
from fedper.device import client_device, resolve_performance
from fedper.errors import ConfigError
from fedper.models import build_model
from fedper.training import TrainSettings, evaluate, train
from fedper.validation import validate_config

SMALL = ["dataset=digits", "model.width_multiplier=0.25", "client_device=cpu", "batch_size=16"]


def train_with(overrides: list[str]):
    """One epoch on random digits-sized images through the resolved switches."""
    cfg = make_config([*SMALL, *overrides])
    device = client_device(cfg)
    assert device == torch.device("cpu")
    perf = resolve_performance(cfg, device)
    model = build_model(cfg, seed=0).to(device, memory_format=perf.memory_format)
    transform = BatchTransform(32, [0.5] * 3, [0.25] * 3, 2, channels_last=perf.channels_last)
    seen = {}

    def record(module, args, output):
        seen.setdefault("input", args[0])
        seen.setdefault("output_dtype", output.dtype)

    first_conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    first_conv.register_forward_hook(record)
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (40, 32, 32, 3), dtype=torch.uint8, generator=generator)
    labels = torch.randint(0, 10, (40,), generator=generator)
    settings = TrainSettings(1, cfg.batch_size, 0.05, autocast_dtype=perf.autocast_dtype)
    stats = train(model, images, labels, transform, settings, generator)
    scores = evaluate(model, images, labels, transform, 16, perf.autocast_dtype)
    return perf, model, seen, stats, scores


def test_bf16_autocast_and_channels_last_forced_on_the_cpu():
    perf, model, seen, stats, scores = train_with(
        ["performance.autocast=bf16", "performance.channels_last=true"]
    )
    assert (perf.autocast_dtype, perf.channels_last) == (torch.bfloat16, True)
    assert seen["output_dtype"] == torch.bfloat16  # autocast really ran the convolutions
    assert seen["input"].is_contiguous(memory_format=torch.channels_last)
    conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert conv.weight.dtype == torch.float32  # weights stay fp32; they travel as float32
    assert stats["loss"] == stats["loss"] and 0 < stats["loss"] < 10  # finite, sensible
    assert 0 <= scores["accuracy"] <= 1


def test_channels_last_off_means_nchw_batches_and_weights():
    perf, model, seen, _, _ = train_with(["performance.channels_last=false"])
    assert not perf.channels_last and perf.autocast_dtype is None
    assert seen["output_dtype"] == torch.float32
    assert seen["input"].is_contiguous()  # no longer channels_last-strided behind the switch
    conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous()


def test_auto_on_the_cpu_is_fp32_with_the_measured_layout():
    perf, _, seen, _, _ = train_with([])
    assert perf.autocast_dtype is None and not perf.cudnn_benchmark
    assert perf.channels_last  # MobileNet-v1 on the CPU: channels_last at every size measured
    assert seen["input"].is_contiguous(memory_format=torch.channels_last)
    assert perf.data_device == torch.device("cpu")


def test_unknown_switch_values_are_refused_by_validation():
    with pytest.raises(ConfigError, match="performance.autocast=fp8"):
        validate_config(make_config(["performance.autocast=fp8"]))
