"""The GPU check: skipped with one line where CUDA is absent; on CUDA its numbers come from
the report and the switches the client core resolved."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from helpers import make_config

from fedper.bench.gpu import bf16_on, channels_last_on, gpu_check, skip_reason
from fedper.bench.table import gpu_lines

CUDA = torch.cuda.is_available()


@pytest.mark.skipif(CUDA, reason="a CUDA device is visible: the check runs instead")
def test_without_cuda_the_check_says_why_it_is_skipped():
    reason = skip_reason()
    assert reason.startswith("GPU check skipped: no CUDA device is visible")
    assert torch.__version__ in reason


@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_with_cuda_the_check_runs():
    assert skip_reason() is None


@pytest.mark.slow
@pytest.mark.skipif(CUDA, reason="a CUDA device is visible: `make gpu-check` runs it")
def test_the_gpu_preset_on_a_cpu_machine_skips_cleanly(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "fedper.bench", "bench=gpu", f"hydra.run.dir={tmp_path / 'run'}"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300, env=os.environ.copy(),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.startswith("GPU check skipped: no CUDA device is visible")
    assert not (tmp_path / "run" / "bench.json").exists()  # nothing ran, no data was made
    assert not (tmp_path / "datasets").exists()


def report_on(devices: list[dict]) -> dict:
    return {
        "federated": {"images_per_second": 900.0, "device": {"name": "from results.json"}},
        "plain": {"images_per_second": 1000.0, "train_step_ms": 12.5, "devices": devices},
    }


def test_the_numbers_come_from_the_report_and_the_workers_switches():
    cuda = {"device": "cuda:0", "gpu_name": "NVIDIA A100", "capability": "8.0",
            "cuda_visible_devices": "1",
            "performance": {"autocast_dtype": "torch.bfloat16", "channels_last": True}}  # fmt: skip
    check = gpu_check(make_config(["bench=gpu"], "bench"), report_on([cuda]))
    assert (check["gpu_name"], check["image_size"], check["gpus"]) == ("NVIDIA A100", 224, ["1"])
    assert check["bf16"] and check["channels_last"]
    assert check["federated_images_per_second"] == 900.0
    assert check["plain_images_per_second"] == 1000.0
    text = "\n".join(gpu_lines(check))
    assert "NVIDIA A100" in text and "bf16 autocast: on, channels_last: on" in text
    # CPU workers: no GPU section
    assert gpu_check(make_config([], "bench"), report_on([{"device": "cpu"}])) is None


def test_switches_are_read_whatever_the_core_calls_them():
    assert not bf16_on({"autocast_dtype": None, "channels_last": False})
    assert bf16_on({"dtype": "bfloat16"})
    assert channels_last_on({"layout": "channels_last"})
    assert not channels_last_on({"layout": "contiguous", "channels_last": False})
