"""The device checks and choices, with fake GPUs (this machine has none) and on the CPU."""

from __future__ import annotations

import os

import pytest
import torch
from helpers import make_config

from fedper import device as dev
from fedper import gpu
from fedper.device import (
    apply_performance,
    check_performance,
    client_device,
    describe,
    describe_line,
    gpu_share,
    resolve_device,
    resolve_performance,
)
from fedper.errors import ConfigError
from fedper.gpu import (
    GpuMemoryError,
    apply_gpu_share,
    arch_supported,
    check_gpu_setup,
    memory_fraction,
    out_of_memory_error,
)

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
# what the torch wheel this project installs was built for
WHEEL_ARCHS = ["sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120"]
A100 = ("NVIDIA A100-SXM4-40GB", (8, 0), True)
T4 = ("Tesla T4", (7, 5), False)
V100 = ("Tesla V100-SXM2-16GB", (7, 0), False)


class FakeGpus:
    """torch.cuda as a machine with `count` identical GPUs would answer."""

    def __init__(self, monkeypatch, card=A100, count=1, archs=WHEEL_ARCHS, total=16 * 2**30):
        name, capability, bf16 = card
        self.fractions: list[tuple[float, torch.device]] = []
        cuda = torch.cuda
        monkeypatch.setattr(cuda, "is_available", lambda: count > 0)
        monkeypatch.setattr(cuda, "device_count", lambda: count)
        monkeypatch.setattr(cuda, "get_device_capability", lambda device=None: capability)
        monkeypatch.setattr(cuda, "get_device_name", lambda device=None: name)
        monkeypatch.setattr(cuda, "get_arch_list", lambda: list(archs))
        # with emulation, torch reports bf16 on any recent GPU (the T4 trap)
        monkeypatch.setattr(
            cuda, "is_bf16_supported", lambda including_emulation=True: bf16 or including_emulation
        )
        monkeypatch.setattr(
            cuda,
            "get_device_properties",
            lambda device=None: type("P", (), {"total_memory": total}),
        )
        monkeypatch.setattr(
            cuda, "set_per_process_memory_fraction", lambda f, d=None: self.fractions.append((f, d))
        )


@pytest.fixture
def no_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)


def config(*overrides: str):
    return make_config(["dataset=digits", *overrides])


@pytest.mark.parametrize(
    ("capability", "archs", "supported"),
    [
        ((8, 0), WHEEL_ARCHS, True),
        ((8, 6), ["sm_80"], True),  # a cubin runs on later minors of its major version
        ((8, 9), WHEEL_ARCHS, True),
        ((7, 0), WHEEL_ARCHS, False),  # V100: "no kernel image" in every client
        ((6, 0), WHEEL_ARCHS, False),  # P100
        ((8, 0), ["sm_86"], False),  # not backwards
        ((9, 0), ["sm_80", "compute_80"], True),  # PTX is compiled for later GPUs
        ((10, 0), ["sm_90a"], False),  # arch-specific cubins run only on their own GPU
        ((12, 0), WHEEL_ARCHS, True),
        ((7, 5), [], False),  # a CPU-only build
    ],
)
def test_arch_support_follows_cuda_compatibility(capability, archs, supported):
    assert arch_supported(capability, archs) is supported


def test_more_gpus_per_client_than_visible_is_one_line(monkeypatch):
    FakeGpus(monkeypatch, count=1)
    with pytest.raises(ConfigError, match=r"num_gpus=2 but only 1 GPU\(s\) are visible"):
        check_gpu_setup(config("client_resources.num_gpus=2"))
    FakeGpus(monkeypatch, count=4)
    with pytest.raises(ConfigError, match="a client trains on one GPU"):
        check_gpu_setup(config("client_resources.num_gpus=2"))
    check_gpu_setup(config("client_resources.num_gpus=0.25"))


def test_cpu_clients_reserve_no_gpu(monkeypatch):
    FakeGpus(monkeypatch)
    cfg = config("client_device=cpu")
    assert gpu_share(cfg) == 0.0  # auto no longer reserves a whole GPU per CPU client
    assert client_device(cfg) == torch.device("cpu")
    check_gpu_setup(cfg)
    with pytest.raises(ConfigError, match="client_device=cpu but client_resources.num_gpus=0.5"):
        check_gpu_setup(config("client_device=cpu", "client_resources.num_gpus=0.5"))


def test_cuda_clients_need_a_gpu_share(monkeypatch):
    FakeGpus(monkeypatch)
    with pytest.raises(ConfigError, match="Ray hides the GPUs"):
        check_gpu_setup(config("client_device=cuda", "client_resources.num_gpus=0"))
    # auto with no share is a CPU client, which is what Ray's hidden GPUs make it anyway
    cfg = config("client_resources.num_gpus=0")
    assert client_device(cfg) == torch.device("cpu")
    check_gpu_setup(cfg)
    cfg = config()
    assert (client_device(cfg), gpu_share(cfg)) == (torch.device("cuda"), 1.0)
    check_gpu_setup(cfg)


def test_an_explicit_gpu_index_for_the_clients_is_refused(monkeypatch):
    FakeGpus(monkeypatch, count=4)
    with pytest.raises(ConfigError, match="client_device=cuda:3: each client actor sees only"):
        check_gpu_setup(config("client_device=cuda:3"))
    check_gpu_setup(config("client_device=cuda:0"))


def test_a_gpu_the_installed_torch_was_not_built_for_is_one_line(monkeypatch):
    FakeGpus(monkeypatch, card=V100)
    with pytest.raises(ConfigError, match=r"V100.*sm_70.*not supported.*built for sm_75"):
        check_gpu_setup(config())
    # CPU clients do not care which GPU is in the machine
    check_gpu_setup(config("client_device=cpu"))


def test_forced_bf16_on_a_gpu_without_it_is_refused(monkeypatch):
    FakeGpus(monkeypatch, card=T4)
    check_gpu_setup(config())
    with pytest.raises(ConfigError, match="performance.autocast=bf16 but Tesla T4"):
        check_gpu_setup(config("performance.autocast=bf16"))


def test_cuda_requested_without_cuda_is_an_error_not_a_fallback(no_gpu):
    with pytest.raises(ConfigError, match="client_device=cuda but no CUDA"):
        resolve_device("cuda", "client_device")
    with pytest.raises(ConfigError, match="num_gpus=1 but no CUDA"):
        gpu_share(config("client_resources.num_gpus=1"))
    assert resolve_device("auto") == torch.device("cpu")
    assert gpu_share(config()) == 0.0
    with pytest.raises(ConfigError, match="client_device=mps is not supported"):
        resolve_device("mps", "client_device")


def test_auto_picks_bf16_and_channels_last_only_where_native(monkeypatch):
    FakeGpus(monkeypatch, card=A100)
    a100 = resolve_performance(config(), torch.device("cuda"))
    assert (a100.autocast_dtype, a100.channels_last) == (torch.bfloat16, True)
    assert a100.cudnn_benchmark and a100.data_device == torch.device("cuda")
    FakeGpus(monkeypatch, card=T4)  # emulated bf16 only: fp32, and NCHW without tensor cores
    t4 = resolve_performance(config(), torch.device("cuda"))
    assert (t4.autocast_dtype, t4.channels_last) == (None, False)


@pytest.mark.parametrize(
    ("model", "size", "channels_last"),
    [("mobile", 32, True), ("mobile", 224, True), ("resnet", 32, False), ("resnet", 224, True)],
)
def test_auto_layout_on_the_cpu_follows_the_measured_rule(model, size, channels_last):
    cfg = config(f"model_name={model}", f"dataset.image_size={size}")
    perf = resolve_performance(cfg, torch.device("cpu"))
    assert perf.channels_last is channels_last
    assert (perf.autocast_dtype, perf.cudnn_benchmark) == (None, False)


def test_explicit_switches_mean_what_they_say_on_any_device(monkeypatch):
    FakeGpus(monkeypatch, card=A100)
    for device in (torch.device("cpu"), torch.device("cuda")):
        off = resolve_performance(
            config("performance.channels_last=false", "performance.autocast=off"), device
        )
        assert (off.channels_last, off.autocast_dtype) == (False, None)
        on = resolve_performance(
            config("performance.channels_last=true", "performance.autocast=bf16"), device
        )
        assert (on.channels_last, on.autocast_dtype) == (True, torch.bfloat16)
    host = resolve_performance(config("performance.data_on_device=false"), torch.device("cuda"))
    assert host.data_device == torch.device("cpu")
    exact = resolve_performance(config("performance.deterministic=true"), torch.device("cuda"))
    assert exact.deterministic and not exact.cudnn_benchmark


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("performance.autocast=fp8", "performance.autocast=fp8 is unknown"),
        ("performance.channels_last=maybe", "performance.channels_last=maybe is unknown"),
        ("performance.deterministic=sometimes", "performance.deterministic=sometimes must be"),
    ],
)
def test_unknown_switch_values_are_refused(override, message):
    with pytest.raises(ConfigError, match=message):
        check_performance(config(override))


@pytest.fixture
def restore_switches():
    saved = (
        torch.backends.cudnn.benchmark,
        torch.backends.cudnn.deterministic,
        torch.are_deterministic_algorithms_enabled(),
    )
    yield
    torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = saved[:2]
    torch.use_deterministic_algorithms(saved[2])


def test_deterministic_mode_sets_every_switch_it_needs(monkeypatch, restore_switches):
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    apply_performance(
        resolve_performance(config("performance.deterministic=true"), torch.device("cpu"))
    )
    assert torch.are_deterministic_algorithms_enabled()
    assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == dev.CUBLAS_WORKSPACE
    apply_performance(resolve_performance(config(), torch.device("cpu")))
    assert not torch.are_deterministic_algorithms_enabled()


def test_the_default_switches_import_no_dynamo_in_a_fresh_process():
    # torch.use_deterministic_algorithms imports torch._dynamo (about a second per ClientApp
    # process on the Deployment Engine); the default (not deterministic) needs no call
    import subprocess
    import sys

    script = (
        "import sys, torch; from fedper.device import Performance, apply_performance; "
        "cpu = torch.device('cpu'); apply_performance(Performance(cpu, cpu, None, True, False, "
        "False)); "
        "print('torch._dynamo' in sys.modules, torch.are_deterministic_algorithms_enabled())"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.stdout.strip() == "False False", done.stderr[-2000:]


def test_a_fractional_share_becomes_a_memory_cap(monkeypatch):
    gpus = FakeGpus(monkeypatch, total=16 * 2**30)
    assert memory_fraction(1.0, 16 * 2**30) is None and memory_fraction(0, 16 * 2**30) is None
    fraction = apply_gpu_share(0.5, torch.device("cuda"))
    # half the card, less what the CUDA context takes outside the allocator
    assert fraction == pytest.approx((8 * 2**30 - gpu.CONTEXT_BYTES) / (16 * 2**30))
    assert gpus.fractions == [(fraction, torch.device("cuda"))]
    assert apply_gpu_share(1.0, torch.device("cuda")) is None
    assert apply_gpu_share(0.5, torch.device("cpu")) is None
    assert len(gpus.fractions) == 1


def test_out_of_memory_becomes_one_line_that_says_what_to_change():
    cfg = make_config(["client_resources.num_gpus=0.25"])
    error = out_of_memory_error(torch.OutOfMemoryError("CUDA out of memory. Tried ..."), cfg)
    assert isinstance(error, GpuMemoryError)
    text = str(error)
    assert "\n" not in text
    for part in ("batch_size=128", "client_resources.num_gpus=0.25", "smaller batch_size"):
        assert part in text
    assert out_of_memory_error(RuntimeError("shape mismatch"), cfg) is None


def test_the_start_up_line_names_device_gpu_dtype_layout_share_and_determinism(monkeypatch):
    FakeGpus(monkeypatch, card=A100)
    cfg = config("client_resources.num_gpus=0.5")
    info = describe(resolve_performance(cfg, client_device(cfg)), gpu_share(cfg))
    assert info["gpu"] == "NVIDIA A100-SXM4-40GB (sm_80)" and info["gpu_share"] == 0.5
    line = describe_line(info)
    for part in ("cuda", "A100", "bf16", "channels_last", "0.5 GPU each", "not deterministic"):
        assert part in line
    cpu = config("client_device=cpu", "model_name=resnet", "performance.deterministic=true")
    info = describe(resolve_performance(cpu, client_device(cpu)), gpu_share(cpu))
    assert info["gpu"] is None and info["layout"] == "nchw" and info["dtype"] == "fp32"
    assert describe_line(info) == "clients on cpu · fp32 · nchw · deterministic"


@pytest.mark.cuda
@needs_cuda
def test_this_gpu_passes_the_checks_and_is_named_at_start():
    cfg = config()
    check_gpu_setup(cfg)  # the real capability against the real arch list
    info = describe(resolve_performance(cfg, client_device(cfg)), gpu_share(cfg))
    assert info["device"] == "cuda" and torch.cuda.get_device_name(0) in info["gpu"]
    native = torch.cuda.get_device_capability(0) >= (8, 0)
    assert info["dtype"] == ("bf16" if native else "fp32")


@pytest.mark.cuda
@needs_cuda
def test_a_real_share_caps_memory_and_an_overflow_reads_as_one_line():
    cuda = torch.device("cuda")
    total = torch.cuda.get_device_properties(cuda).total_memory
    try:
        apply_gpu_share(0.25, cuda)
        with pytest.raises(torch.OutOfMemoryError) as caught:
            torch.empty(int(0.3 * total), dtype=torch.uint8, device=cuda)
        message = str(out_of_memory_error(caught.value, config("client_resources.num_gpus=0.25")))
        assert "smaller batch_size" in message and "\n" not in message
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0, cuda)
        torch.cuda.empty_cache()
