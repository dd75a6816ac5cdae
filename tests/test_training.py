"""Local training and evaluation: seeded, one host wait per call, and what they count."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from helpers import make_config

from fedper.data.transforms import BatchTransform
from fedper.device import apply_performance, resolve_performance
from fedper.models import build_model
from fedper.training import TrainSettings, evaluate, train

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
MEAN, STD = [0.5, 0.5, 0.5], [0.25, 0.25, 0.25]
CPU = torch.device("cpu")


def setup(device: torch.device = CPU, n: int = 40):
    """A tiny MobileNet, a transform with both augmentations and random uint8 images."""
    cfg = make_config(["dataset=digits", "model.width_multiplier=0.25"])
    model = build_model(cfg, seed=0).to(device)
    transform = BatchTransform(32, MEAN, STD, crop_padding=2, flip=True, device=device)
    generator = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (n, 28, 28, 3), dtype=torch.uint8, generator=generator)
    labels = torch.randint(0, 10, (n,), generator=generator)
    return model, transform, images.to(device), labels.to(device)


SETTINGS = TrainSettings(epochs=2, batch_size=16, learning_rate=0.05)


def test_training_is_a_pure_function_of_the_seed():
    runs = []
    for seed in (3, 3, 4):
        model, transform, images, labels = setup()
        stats = train(
            model, images, labels, transform, SETTINGS, torch.Generator().manual_seed(seed)
        )
        runs.append((stats, model.state_dict()))
    (first, a), (again, b), (other, c) = runs
    assert first == again and all(torch.equal(a[k], b[k]) for k in a)
    assert first["loss"] != other["loss"]
    assert first["num_examples"] == 40 and 0 < first["loss"] < 10


def count_item_calls(monkeypatch) -> list[int]:
    calls = [0]
    item = torch.Tensor.item

    def counted(self):
        calls[0] += 1
        return item(self)

    monkeypatch.setattr(torch.Tensor, "item", counted)
    return calls


def test_training_reads_the_loss_back_once_per_call_not_per_batch(monkeypatch):
    model, transform, images, labels = setup()
    calls = count_item_calls(monkeypatch)
    train(model, images, labels, transform, SETTINGS, torch.Generator().manual_seed(0))
    assert calls[0] == 1  # 2 epochs x 3 batches used to be 6 reads, each a device sync


def test_the_reported_loss_is_the_mean_over_every_example_of_every_step(monkeypatch):
    model, transform, images, labels = setup()
    losses = []
    cross_entropy = F.cross_entropy

    def recorded(logits, target, **kwargs):
        loss = cross_entropy(logits, target, **kwargs)
        losses.append((float(loss.detach()), len(target)))
        return loss

    monkeypatch.setattr(F, "cross_entropy", recorded)
    stats = train(model, images, labels, transform, SETTINGS, torch.Generator().manual_seed(0))
    assert [n for _, n in losses] == [16, 16, 8, 16, 16, 8]
    expected = sum(loss * n for loss, n in losses) / 80
    assert stats["loss"] == pytest.approx(expected, rel=1e-12)


def test_evaluation_counts_examples_and_matches_a_direct_computation():
    model, transform, images, labels = setup(n=37)
    stats = evaluate(model, images, labels, transform, batch_size=16)
    model.eval()
    with torch.no_grad():
        logits = model(transform(images))
    assert stats["num_examples"] == 37
    assert stats["accuracy"] == (logits.argmax(1) == labels).sum().item() / 37
    assert stats["loss"] == pytest.approx(F.cross_entropy(logits, labels).item(), rel=1e-5)


@pytest.mark.parametrize("channels_last", [False, True])
def test_model_and_batches_share_the_layout_through_training(channels_last):
    model, _, images, labels = setup()
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    transform = BatchTransform(
        32, MEAN, STD, crop_padding=2, flip=True, channels_last=channels_last
    )
    seen = []
    model.register_forward_pre_hook(
        lambda _, args: seen.append(args[0].is_contiguous(memory_format=fmt))
    )
    train(model, images, labels, transform, SETTINGS, torch.Generator().manual_seed(0))
    conv = next(
        m for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3)
    )
    assert all(seen) and len(seen) == 6
    assert conv.weight.is_contiguous(memory_format=fmt)


@pytest.fixture
def deterministic():
    """Deterministic algorithms on for one test, then back to how they were."""
    before = torch.are_deterministic_algorithms_enabled()
    cfg = make_config(["dataset=digits", "client_device=cpu", "performance.deterministic=true"])
    apply_performance(resolve_performance(cfg, torch.device("cpu")))
    yield
    torch.use_deterministic_algorithms(before)
    torch.backends.cudnn.deterministic = False


def test_every_operation_of_a_training_step_has_a_deterministic_cpu_kernel(deterministic):
    model, transform, images, labels = setup()
    generator = torch.Generator().manual_seed(0)
    train(model, images, labels, transform, SETTINGS, generator)  # would raise otherwise
    evaluate(model, images, labels, transform, batch_size=16)


@pytest.mark.cuda
@needs_cuda
def test_a_deterministic_cuda_run_repeats_bit_for_bit(deterministic):
    cfg = make_config(["dataset=digits", "client_device=cuda", "performance.deterministic=true"])
    apply_performance(resolve_performance(cfg, torch.device("cuda")))
    states = []
    for _ in range(2):
        model, transform, images, labels = setup(torch.device("cuda"))
        train(model, images, labels, transform, SETTINGS, torch.Generator().manual_seed(0))
        states.append(model.state_dict())
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])


@pytest.mark.cuda
@needs_cuda
def test_a_cuda_training_call_waits_for_the_device_once():
    model, transform, images, labels = setup(torch.device("cuda"))
    generator = torch.Generator().manual_seed(0)
    train(model, images, labels, transform, SETTINGS, generator)  # cuDNN and allocator warm-up
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            train(model, images, labels, transform, SETTINGS, generator)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    syncs = [w for w in caught if "synchroniz" in str(w.message)]
    assert len(syncs) == 1, [str(w.message) for w in syncs]


@pytest.mark.cuda
@needs_cuda
def test_cuda_training_sees_the_same_shuffles_and_crops_as_the_cpu(monkeypatch):
    batches = {}
    for name in ("cpu", "cuda"):
        model, transform, images, labels = setup(torch.device(name))
        firsts = batches.setdefault(name, [])
        model.register_forward_pre_hook(lambda _, args, firsts=firsts: firsts.append(args[0].cpu()))
        one_epoch = TrainSettings(epochs=1, batch_size=16, learning_rate=0.05)
        train(model, images, labels, transform, one_epoch, torch.Generator().manual_seed(2))
    for on_cpu, on_gpu in zip(batches["cpu"], batches["cuda"], strict=True):
        torch.testing.assert_close(on_gpu, on_cpu, atol=1e-5, rtol=0)


def test_sgd_is_torchs_update_bit_for_bit_without_importing_dynamo():
    import copy
    import subprocess
    import sys

    from fedper.training import SGD, TrainSettings

    torch.manual_seed(0)
    ours = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
    theirs = copy.deepcopy(ours)
    settings = TrainSettings(1, 4, 0.05, momentum=0.9, weight_decay=1e-3)
    optimizers = {
        id(ours): SGD(list(ours.parameters()), settings),
        id(theirs): torch.optim.SGD(theirs.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-3),
    }
    for _ in range(20):
        x, y = torch.randn(4, 8), torch.randint(0, 3, (4,))
        for net in (ours, theirs):
            optimizers[id(net)].zero_grad()
            torch.nn.functional.cross_entropy(net(x), y).backward()
            optimizers[id(net)].step()
    assert all(
        torch.equal(a, b) for a, b in zip(ours.parameters(), theirs.parameters(), strict=True)
    )
    # a fresh process trains a step without importing torch._dynamo (a second per ClientApp)
    script = (
        "import sys, torch; from fedper.training import SGD, TrainSettings; "
        "p = torch.nn.Parameter(torch.ones(3)); p.grad = torch.ones(3); "
        "SGD([p], TrainSettings(1, 1, 0.1)).step(); print('torch._dynamo' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.stdout.strip() == "False", done.stderr[-2000:]
