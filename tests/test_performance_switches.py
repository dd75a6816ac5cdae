"""The GPU-path switches: resolved per device, and the CPU path works with each forced on."""

import pytest
import torch
from conftest import make_config
from test_client_app import Run, task_identity  # noqa: F401  (autouse fixture)

from fedper import client_app
from fedper.config import ConfigError, resolve_performance, validate_config


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
    run = Run(tmp_path, "fedper", ["performance.autocast=bf16", "performance.channels_last=true"])
    reply = run.train(0, 1)
    runtime = client_app.runtime_for(run.spec)
    assert runtime.settings.autocast_dtype == torch.bfloat16
    conv = next(m for m in runtime.model.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    loss = reply.content["metrics"]["train_loss"]
    assert loss == loss and 0 < loss < 10  # finite and sensible
    accuracy = run.evaluate(0, 1).content["metrics"]["accuracy"]
    assert 0 <= accuracy <= 1
    # the shared arrays still travel as float32, whatever the compute precision
    assert all(a.dtype in ("float32", "float64", "int64") for a in reply.content["arrays"].values())
