"""The GPU-path switches: resolved per device, and the CPU path works with each forced on."""

import pytest
import torch
from conftest import make_config
from harness import plan_local

from fedper.client import NodePaths, worker_for
from fedper.config import ConfigError, resolve_performance, validate_config
from fedper.models import build_model


def test_auto_is_off_on_the_cpu_and_on_for_cuda():
    cfg = make_config()
    cpu = resolve_performance(cfg, torch.device("cpu"))
    assert (cpu.autocast_dtype, cpu.channels_last, cpu.cudnn_benchmark) == (None, False, False)
    assert cpu.data_device == torch.device("cpu")
    cuda = resolve_performance(cfg, torch.device("cuda"))
    assert cuda.channels_last and cuda.cudnn_benchmark
    assert cuda.data_device == torch.device("cuda")  # uint8 images live on the GPU
    expected = torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    assert cuda.autocast_dtype == expected
    host = resolve_performance(
        make_config(["performance.data_on_device=false"]), torch.device("cuda")
    )
    assert host.data_device == torch.device("cpu")


def test_unknown_switch_values_are_refused():
    with pytest.raises(ConfigError, match="performance.autocast=fp8"):
        validate_config(make_config(["performance.autocast=fp8"]))


def test_training_with_bf16_autocast_and_channels_last_forced_on_the_cpu(tmp_path):
    plan = plan_local(tmp_path, ["performance.autocast=bf16", "performance.channels_last=true"])
    worker = worker_for(plan.spec, NodePaths.of(plan.spec, {}))
    assert worker.settings.autocast_dtype == torch.bfloat16
    conv = next(m for m in worker.model.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    shared = build_model(plan.spec.cfg, seed=plan.spec.cfg.seed).part_state(("base",))
    result = worker.train(0, 1, shared)
    loss = result.metrics["train_loss"]
    assert loss == loss and 0 < loss < 10  # finite and sensible
    assert 0 <= worker.evaluate(0, 1, shared)["accuracy"] <= 1
    # the shared arrays still travel as float32, whatever the compute precision
    assert all(t.dtype in (torch.float32, torch.int64) for t in result.shared.values())
