"""Where and how clients compute: device, GPU share, dtype, memory layout and determinism
(the GPU checks and memory share: fedper.gpu).

Everything here is resolved from the config and what this process sees of torch and CUDA,
and every mistake is caught in one line before Ray starts (`check_gpu_setup`).

What is repeatable, for a given seed:
- CPU: bit for bit, always (same machine, torch build and `client_resources.num_cpus`);
  `performance.deterministic` changes nothing there.
- CUDA with `performance.deterministic=true`: bit for bit on the same GPU model, driver and
  torch build (cuDNN picks fixed algorithms, no autotuning); needed for identical resumes.
- CUDA with the default `false`: runs agree only statistically (cuDNN autotuning and
  atomics reorder float sums), so a resumed run drifts from an uninterrupted one.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from omegaconf import DictConfig

from fedper.checks import check
from fedper.errors import ConfigError

# cuBLAS is deterministic only with a fixed workspace; read when its first handle is made
CUBLAS_WORKSPACE = ":4096:8"


def resolve_device(name: str, key: str = "device") -> torch.device:
    """`auto` means CUDA when present; asking for CUDA without it is an error, not a fallback."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"{key}={name} is not a device: use auto, cpu or cuda[:N]") from None
    check(
        device.type in ("cpu", "cuda"),
        f"{key}={name} is not supported: use auto, cpu or cuda",
    )
    check(
        device.type != "cuda" or torch.cuda.is_available(),
        f"{key}={name} but no CUDA device is visible: use {key}=auto or cpu",
    )
    return device


def resolve_num_gpus(value, client_device: str = "auto") -> float:
    """GPU share per client: `auto` is one GPU each for clients on CUDA, else none."""
    if value == "auto":
        wants_gpu = client_device != "cpu" and torch.cuda.is_available()
        return 1.0 if wants_gpu else 0.0
    check(
        isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0,
        f"client_resources.num_gpus={value} must be auto or a number >= 0 (0.5 = two per GPU)",
    )
    check(
        value == 0 or torch.cuda.is_available(),
        f"client_resources.num_gpus={value} but no CUDA device is visible: use 0 or auto",
    )
    return float(value)


def gpu_share(cfg: DictConfig) -> float:
    """The GPU share each client actor reserves (Ray's `num_gpus`)."""
    return resolve_num_gpus(cfg.client_resources.num_gpus, str(cfg.client_device))


def client_device(cfg: DictConfig) -> torch.device:
    """The device a client trains on; with no GPU share Ray hides the GPUs, so `auto` is CPU."""
    if cfg.client_device == "auto" and gpu_share(cfg) == 0:
        return torch.device("cpu")
    return resolve_device(cfg.client_device, "client_device")


def gpu_name(index: int = 0) -> str:
    major, minor = torch.cuda.get_device_capability(index)
    return f"{torch.cuda.get_device_name(index)} (sm_{major}{minor})"


def native_bf16(device: torch.device) -> bool:
    """bf16 without emulation: Ampere (sm_80) and later; a T4 (sm_75) has no bf16 convolutions."""
    if device.type != "cuda":
        return False
    return tuple(torch.cuda.get_device_capability(device)) >= (8, 0) and bool(
        torch.cuda.is_bf16_supported(including_emulation=False)
    )


# The CPU channels_last rule, measured with scripts/measure_device.py layout (2-thread AMD
# EPYC, batch 32, a shared and noisy machine, step times interleaved; NCHW/channels_last in
# two runs):
#   MobileNet-v1: 1.49/1.31x at 32 px, 1.32/1.44x at 64 px, 2.26/1.75x at 224 px: oneDNN runs
#                 depthwise convolutions and BatchNorm much faster in NHWC, at every size.
#   ResNet-34:    0.90/0.90x at 32 px, 0.99/1.00x at 64 px, 1.15/1.17x at 224 px.
# The value is the smallest image size from which channels_last wins; other models stay NCHW.
CPU_CHANNELS_LAST_FROM = {"mobile": 0, "resnet": 128}


def auto_channels_last(model_name: str, device: torch.device, image_size: int) -> bool:
    """The faster layout for this model, device and input size (True = channels_last).

    CUDA: channels_last from sm_80 on, where cuDNN runs convolutions on tensor cores (TF32 in
    fp32, bf16 under autocast) in NHWC; older GPUs compute fp32 without tensor cores and stay
    NCHW, cuDNN's native layout. Not measured here (no GPU): NVIDIA's guidance for tensor cores.
    CPU: the measured table above.
    """
    if device.type == "cuda":
        return tuple(torch.cuda.get_device_capability(device)) >= (8, 0)
    threshold = CPU_CHANNELS_LAST_FROM.get(model_name)
    return threshold is not None and image_size >= threshold


@dataclass(frozen=True)
class Performance:
    """The compute switches, resolved for one training device."""

    device: torch.device
    data_device: torch.device  # where a client's uint8 images live
    autocast_dtype: torch.dtype | None  # None = fp32
    channels_last: bool  # model and batches alike
    cudnn_benchmark: bool
    deterministic: bool

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format


def resolve_performance(cfg: DictConfig, device: torch.device) -> Performance:
    """`auto` picks the fastest supported choice for this model, device and input size.

    bf16 only on GPUs with native bf16. The CPU stays fp32 under `auto`, so the default CPU
    numerics do not depend on the processor: on this one (AMD EPYC with avx512_bf16) bf16
    autocast was slower for MobileNet-v1 at 32 and 64 px (50.6 vs 31.0, 79.2 vs 50.9 ms a
    step) but about 1.9x faster at 224 px for both models; `performance.autocast=bf16` opts in.
    """
    perf = cfg.performance
    if perf.autocast == "auto":
        autocast_dtype = torch.bfloat16 if native_bf16(device) else None
    else:
        autocast_dtype = torch.bfloat16 if perf.autocast == "bf16" else None
    if perf.channels_last == "auto":
        channels_last = auto_channels_last(cfg.model_name, device, cfg.dataset.image_size)
    else:
        channels_last = bool(perf.channels_last)
    # runs saved before the switch existed resume with its default
    deterministic = bool(perf.get("deterministic", False))
    return Performance(
        device=device,
        data_device=device if perf.data_on_device else torch.device("cpu"),
        autocast_dtype=autocast_dtype,
        channels_last=channels_last,
        cudnn_benchmark=device.type == "cuda" and bool(perf.cudnn_benchmark) and not deterministic,
        deterministic=deterministic,
    )


def apply_performance(perf: Performance) -> None:
    """Set the process-wide switches (cuDNN, deterministic algorithms) for this client process."""
    torch.backends.cudnn.benchmark = perf.cudnn_benchmark
    torch.backends.cudnn.deterministic = perf.deterministic
    if perf.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
    # the setter imports torch._dynamo (about a second in a fresh process): only call it on a change
    current = torch.are_deterministic_algorithms_enabled()
    if current != perf.deterministic or torch.is_deterministic_algorithms_warn_only_enabled():
        torch.use_deterministic_algorithms(perf.deterministic, warn_only=False)


def describe(perf: Performance, share: float) -> dict:
    """What the clients compute with, for results.json."""
    on_cuda = perf.device.type == "cuda"
    return {
        "device": str(perf.device),
        "gpu": gpu_name(perf.device.index or 0) if on_cuda else None,
        "dtype": "bf16" if perf.autocast_dtype == torch.bfloat16 else "fp32",
        "layout": "channels_last" if perf.channels_last else "nchw",
        "gpu_share": share,
        "deterministic": perf.deterministic,
        "cudnn_benchmark": perf.cudnn_benchmark,
    }


def describe_line(info: dict) -> str:
    """The start-up line: which device, GPU, dtype, layout, share and determinism."""
    where = info["device"] + (
        f" {info['gpu']}, {info['gpu_share']:g} GPU each" if info["gpu"] else ""
    )
    repeatable = "deterministic" if info["deterministic"] else "not deterministic"
    return f"clients on {where} · {info['dtype']} · {info['layout']} · {repeatable}"


def check_performance(cfg: DictConfig) -> None:
    """The `performance.*` values are ones this module knows."""
    perf = cfg.performance
    check(
        perf.autocast in ("auto", "bf16", "off"),
        f"performance.autocast={perf.autocast} is unknown: use auto, bf16 or off",
    )
    check(
        perf.channels_last in ("auto", True, False),
        f"performance.channels_last={perf.channels_last} is unknown: use auto, true or false",
    )
    for key in ("data_on_device", "cudnn_benchmark", "deterministic"):
        value = perf.get(key, False)
        check(isinstance(value, bool), f"performance.{key}={value} must be true or false")
    cache_mb = perf.client_data_cache_mb
    check(
        isinstance(cache_mb, (int, float)) and not isinstance(cache_mb, bool) and cache_mb >= 0,
        f"performance.client_data_cache_mb={cache_mb} must be a size in MB, 0 or more "
        "(0: a worker keeps only the client it serves)",
    )
