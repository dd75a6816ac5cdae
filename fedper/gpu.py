"""The GPU a client computes on: whether this torch build runs on it, the checks before Ray
starts, each client's share of its memory, and what an out-of-memory error means."""

from __future__ import annotations

import re

import torch
from omegaconf import DictConfig

from fedper.checks import check
from fedper.device import client_device, gpu_name, gpu_share, native_bf16
from fedper.errors import FedPerError

# The CUDA context and cuDNN/cuBLAS handles live outside the caching allocator that
# `set_per_process_memory_fraction` caps, so a share leaves this much for them.
CONTEXT_BYTES = 512 * 2**20


class GpuMemoryError(FedPerError):
    """A client ran out of GPU memory."""


def arch_supported(capability: tuple[int, int], arch_list: list[str]) -> bool:
    """Whether a torch build for `arch_list` (e.g. sm_80, compute_90) runs on this capability.

    A cubin runs on its own major version at the same or a higher minor (sm_80 on sm_86),
    PTX (compute_XY) is compiled for any later GPU, and `a` variants (sm_90a) only on their own.
    """
    for arch in arch_list:
        match = re.fullmatch(r"(sm|compute)_(\d+)(\d)([af]?)", arch)
        if not match:
            continue
        kind, major, minor, variant = match[1], int(match[2]), int(match[3]), match[4]
        if variant == "a" and (major, minor) != capability:
            continue
        if kind == "compute" and (major, minor) <= capability:
            return True
        if kind == "sm" and major == capability[0] and minor <= capability[1]:
            return True
    return False


def check_gpu_arch(index: int = 0) -> None:
    """One line when the installed torch has no kernels for this GPU (else "no kernel image")."""
    capability = tuple(torch.cuda.get_device_capability(index))
    built_for = torch.cuda.get_arch_list()
    check(
        arch_supported(capability, built_for),
        f"GPU {index}, {gpu_name(index)}, is not supported by the installed torch "
        f"{torch.__version__} (built for {', '.join(built_for) or 'no GPU'}): install a torch "
        "build for this GPU or set client_device=cpu",
    )


def check_gpu_setup(cfg: DictConfig) -> None:
    """The GPU checks for clients that run as Ray actors on this machine; before Ray starts."""
    share = gpu_share(cfg)
    name, value = str(cfg.client_device), cfg.client_resources.num_gpus
    gpus = torch.cuda.device_count() if share > 0 else 0
    check(
        share <= gpus,
        f"client_resources.num_gpus={value} but only {gpus} GPU(s) are visible: use at most "
        f"{gpus} (a fraction such as 0.5 puts two clients on one GPU)",
    )
    check(
        share <= 1,
        f"client_resources.num_gpus={value}: a client trains on one GPU, so more only idles "
        "the rest; use 1 or a fraction such as 0.5",
    )
    check(
        not (name == "cpu" and share > 0),
        f"client_device=cpu but client_resources.num_gpus={value} reserves GPU time for "
        "every client: use client_resources.num_gpus=0 or auto",
    )
    device = client_device(cfg)
    if device.type != "cuda":
        return
    check(
        share > 0,
        f"client_device={name} but client_resources.num_gpus={value}: Ray hides the GPUs "
        "from clients without a GPU share; use num_gpus=auto or a share such as 0.5",
    )
    check(
        device.index in (None, 0),
        f"client_device={name}: each client actor sees only the GPU Ray gave it, as cuda:0; "
        "use client_device=cuda (or auto) and let Ray place the clients",
    )
    for index in range(torch.cuda.device_count()):
        check_gpu_arch(index)
    check(
        cfg.performance.autocast != "bf16" or native_bf16(torch.device("cuda", 0)),
        f"performance.autocast=bf16 but {gpu_name(0)} has no native bf16 convolutions: use "
        "performance.autocast=auto or off",
    )


def memory_fraction(share: float, total_bytes: int) -> float | None:
    """The caching-allocator cap for a fractional GPU share, or None for a whole GPU."""
    if share <= 0 or share >= 1:
        return None
    return max(share * total_bytes - CONTEXT_BYTES, 0.05 * total_bytes) / total_bytes


def apply_gpu_share(share: float, device: torch.device) -> float | None:
    """Cap this process's GPU memory at its share, so an over-full GPU fails early and loudly."""
    if device.type != "cuda":
        return None
    fraction = memory_fraction(share, torch.cuda.get_device_properties(device).total_memory)
    if fraction is not None:
        torch.cuda.set_per_process_memory_fraction(fraction, device)
    return fraction


def out_of_memory_error(error: BaseException, cfg: DictConfig) -> GpuMemoryError | None:
    """A CUDA out-of-memory error as one line that says what to change; None for others."""
    if not isinstance(error, torch.OutOfMemoryError):
        return None
    return GpuMemoryError(
        f"a client ran out of GPU memory ({cfg.model_name} at {cfg.dataset.image_size} px, "
        f"batch_size={cfg.batch_size}, client_resources.num_gpus="
        f"{cfg.client_resources.num_gpus}): use a smaller batch_size or a larger "
        "client_resources.num_gpus (fewer clients per GPU)"
    )
