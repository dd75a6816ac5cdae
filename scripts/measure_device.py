"""Device-path measurements on this machine: layout per model and size, and model memory.

    python scripts/measure_device.py layout [--models mobile resnet] [--sizes 32 64 224]
    python scripts/measure_device.py step [--size 224] [--batch 32] [--width 1.0]
    python scripts/measure_device.py memory [--size 224] [--batch 128]

Layout: one SGD training step (forward, backward, update) of batch 32, with model and input
both NCHW, both channels_last, and mixed (NCHW model, channels_last input: what the old
transform produced). The variants are interleaved step by step, so a busy neighbour slows
each of them alike; the median and the minimum (the least disturbed repetition) are
reported.

Memory: what one client's training step keeps on its device, estimated from the tensors
autograd saves in a forward pass at a small batch (on the CPU, scaled linearly to `--batch`;
CPU autocast runs convolutions, BatchNorm and ReLU in bf16 as CUDA autocast does), plus
weights, gradients and momentum, plus the two largest activations as backward's transients.
Not counted: the CUDA context and cuDNN workspaces, outside PyTorch's allocator.

Step: MobileNet-v1 training steps through `fedper.training.train` on CIFAR-sized uint8 images
(32 px, resized on the fly), the code of an earlier revision (`--baseline`, its default
settings) against this checkout's default path and this checkout with channels_last off.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
import types
from pathlib import Path

import torch
import torch.nn.functional as F

from fedper import training
from fedper.data import transforms
from fedper.device import resolve_performance
from fedper.models import MODELS

ROOT = Path(__file__).resolve().parents[1]

LAYOUTS = {
    "nchw": (torch.contiguous_format, torch.contiguous_format),
    "mixed": (torch.contiguous_format, torch.channels_last),
    "channels_last": (torch.channels_last, torch.channels_last),
}


def step_seconds(model, x, y, optimizer, dtype=None) -> float:
    started = time.perf_counter()
    with torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
        loss = F.cross_entropy(model(x), y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return time.perf_counter() - started


def layout(
    models: list[str], sizes: list[int], batch: int, repeats: int, width: float, bf16: bool
) -> None:
    torch.manual_seed(0)
    variants = dict(LAYOUTS)
    if bf16:  # bf16 autocast, in the layout that wins in fp32
        variants["channels_last+bf16"] = LAYOUTS["channels_last"]
    print(
        f"threads={torch.get_num_threads()} batch={batch} width={width} repeats={repeats} (ms/step)"
    )
    for name in models:
        for size in sizes:
            setups = {}
            for label, (model_format, input_format) in variants.items():
                options = {"width_multiplier": width} if name == "mobile" else {}
                model = MODELS[name](10, 2, **options).to(memory_format=model_format).train()
                x = torch.randn(batch, 3, size, size).contiguous(memory_format=input_format)
                y = torch.randint(0, 10, (batch,))
                optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
                dtype = torch.bfloat16 if label.endswith("bf16") else None
                setups[label] = (model, x, y, optimizer, dtype)
                step_seconds(*setups[label])  # warm-up: oneDNN primitives, allocator
            times = {label: [] for label in setups}
            for _ in range(repeats):
                for label, setup in setups.items():
                    times[label].append(step_seconds(*setup))
            for stat in (statistics.median, min):
                ms = {label: stat(t) * 1000 for label, t in times.items()}
                print(
                    f"{name:7s} {size:4d}px {stat.__name__:6s} "
                    + "  ".join(f"{label} {value:7.1f}" for label, value in ms.items())
                    + f"  nchw/channels_last {ms['nchw'] / ms['channels_last']:.2f}x",
                    flush=True,
                )


def module_at(revision: str, path: str) -> types.ModuleType:
    """A module of this repository as it was at `revision`."""
    show = ["git", "-C", str(ROOT), "show", f"{revision}:{path}"]
    source = subprocess.run(show, capture_output=True, text=True, check=True).stdout
    module = types.ModuleType(f"{path}@{revision}")
    sys.modules[module.__name__] = module  # dataclasses look their module up there
    exec(compile(source, f"{revision}:{path}", "exec"), module.__dict__)
    return module


def step(baseline: str, size: int, batch: int, width: float, steps: int, repeats: int) -> None:
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(str(ROOT / "conf"), version_base=None):
        cfg = compose("base", [f"dataset.image_size={size}", f"model.width_multiplier={width}"])
    old_training = module_at(baseline, "fedper/training.py")
    old_transforms = module_at(baseline, "fedper/data/transforms.py")
    stats = dict(mean=list(cfg.dataset.mean), std=list(cfg.dataset.std), crop_padding=4, flip=True)
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (batch * steps, 32, 32, 3), dtype=torch.uint8)
    labels = torch.randint(0, 10, (batch * steps,))
    auto = resolve_performance(cfg, torch.device("cpu"))
    variants = {}
    for label, code, transform_class, channels_last in (
        (f"{baseline} default", old_training, old_transforms.BatchTransform, False),
        ("new default", training, transforms.BatchTransform, auto.channels_last),
        ("new nchw", training, transforms.BatchTransform, False),
    ):
        model = MODELS["mobile"](10, 2, width_multiplier=width)
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        transform = transform_class(size, channels_last=channels_last, **stats)
        settings = code.TrainSettings(epochs=1, batch_size=batch, learning_rate=0.01)
        variants[label] = (code.train, model, transform, settings)
    times = {label: [] for label in variants}
    for rep in range(repeats + 1):  # the first round warms up
        for label, (train, model, transform, settings) in variants.items():
            started = time.perf_counter()
            train(model, images, labels, transform, settings, generator)
            if rep:
                times[label].append((time.perf_counter() - started) / steps)
    print(
        f"MobileNet-v1 width {width}, {size} px, batch {batch}, threads "
        f"{torch.get_num_threads()}, {steps} steps a call, {repeats} interleaved calls (median)"
    )
    base = times[f"{baseline} default"]
    for label, values in times.items():
        med, low = statistics.median(values), min(values)
        print(
            f"  {label:24s} median {med * 1000:8.1f} ms/step {statistics.median(base) / med:5.2f}x"
            f"   min {low * 1000:8.1f} ms/step {min(base) / low:5.2f}x"
        )


def saved_bytes(model, x, dtype) -> tuple[int, int]:
    """Bytes of the distinct non-parameter tensors autograd saves, and the largest of them."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in params:
            saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        with torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
            F.cross_entropy(model(x), torch.zeros(len(x), dtype=torch.long))
    return sum(saved.values()), max(saved.values())


def memory(size: int, batch: int, probe: int) -> None:
    gib = 2**30
    print(f"estimated GPU memory per client at {size} px, batch {batch} (GiB)")
    print("model          dtype  weights+grads+momentum  saved activations  transients  total")
    for name in ("mobile", "resnet"):
        model = MODELS[name](10, 2).train()
        x = torch.randn(probe, 3, size, size)
        weights = 3 * sum(p.numel() * p.element_size() for p in model.parameters())
        for label, dtype in (("fp32", None), ("bf16", torch.bfloat16)):
            total_saved, largest = saved_bytes(model, x, dtype)
            scale = batch / probe
            activations, transients = total_saved * scale, 2 * largest * scale
            # (autocast's bf16 weight copies are saved tensors, so they count as saved)
            total = weights + activations + transients
            print(
                f"{MODELS[name].__name__:13s}  {label}   {weights / gib:8.2f}"
                f"               {activations / gib:8.2f}          {transients / gib:6.2f}"
                f"      {total / gib:5.2f}"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    lay = sub.add_parser("layout")
    lay.add_argument("--models", nargs="+", default=["mobile", "resnet"])
    lay.add_argument("--sizes", nargs="+", type=int, default=[32, 64, 224])
    lay.add_argument("--batch", type=int, default=32)
    lay.add_argument("--repeats", type=int, default=5)
    lay.add_argument("--width", type=float, default=1.0, help="MobileNet-v1 width multiplier")
    lay.add_argument("--bf16", action="store_true", help="also time bf16 autocast")
    one = sub.add_parser("step")
    one.add_argument("--baseline", default="836d9c6", help="revision before the device work")
    one.add_argument("--size", type=int, default=224)
    one.add_argument("--batch", type=int, default=32)
    one.add_argument("--width", type=float, default=1.0)
    one.add_argument("--steps", type=int, default=2)
    one.add_argument("--repeats", type=int, default=5)
    mem = sub.add_parser("memory")
    mem.add_argument("--size", type=int, default=224)
    mem.add_argument("--batch", type=int, default=128)
    mem.add_argument("--probe", type=int, default=8, help="batch actually run on the CPU")
    args = parser.parse_args()
    if args.command == "memory":
        memory(args.size, args.batch, args.probe)
    if args.command == "step":
        step(args.baseline, args.size, args.batch, args.width, args.steps, args.repeats)
    if args.command == "layout":
        layout(args.models, args.sizes, args.batch, args.repeats, args.width, args.bf16)


if __name__ == "__main__":
    main()
