"""The GPU check: on CUDA, which GPU the clients trained on, images/s of the federated run
and of the plain loop, and whether bf16 autocast and channels_last were on; elsewhere one
line saying why it was skipped."""

from __future__ import annotations

import torch
from omegaconf import DictConfig


def skip_reason() -> str | None:
    """Why the GPU check cannot run here, or None when a CUDA device is visible."""
    if torch.cuda.is_available():
        return None
    build = f"torch {torch.__version__}" + (
        f" built for CUDA {torch.version.cuda}" if torch.version.cuda else " without CUDA"
    )
    return f"GPU check skipped: no CUDA device is visible ({build})"


def bf16_on(performance: dict) -> bool:
    """The resolved switches name bf16 as the autocast dtype (e.g. `torch.bfloat16`)."""
    return any("bfloat16" in str(value) for value in performance.values())


def channels_last_on(performance: dict) -> bool:
    """channels_last is on as a switch (`channels_last: True`) or as a named layout."""
    return any(
        (key == "channels_last" and value is True) or value == "channels_last"
        for key, value in performance.items()
    )


def gpu_check(cfg: DictConfig, report: dict) -> dict | None:
    """The GPU check's numbers from a finished benchmark report; None when not on CUDA."""
    devices = [d for d in report["plain"]["devices"] if d["device"].startswith("cuda")]
    if not devices:
        return None
    first = devices[0]
    return {
        "gpu_name": first["gpu_name"],
        "capability": first["capability"],
        "gpus": sorted({d.get("cuda_visible_devices") or "" for d in devices}),
        "torch": torch.__version__,
        "image_size": cfg.dataset.image_size,
        "federated_images_per_second": report["federated"]["images_per_second"],
        "plain_images_per_second": report["plain"]["images_per_second"],
        "plain_step_ms": report["plain"]["train_step_ms"],
        "bf16": bf16_on(first["performance"]),
        "channels_last": channels_last_on(first["performance"]),
        "performance": first["performance"],
        "federated_device": report["federated"].get("device"),
    }
