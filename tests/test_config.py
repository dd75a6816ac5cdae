"""Bad settings: one clear message naming the key and what would work, before Ray starts."""

import pytest
from conftest import TINY, make_config, run_main

from fedper.config import validate_config
from fedper.errors import ConfigError


@pytest.mark.parametrize(
    ("override", "names"),
    [
        ("dataset.num_classes=11", ["dataset.num_classes=11", "1-10"]),
        ("dataset.num_classes=0", ["dataset.num_classes=0", "1-10"]),
        ("model.num_head_layers=5", ["model.num_head_layers=5", "1-4"]),
        ("model.num_head_layers=0", ["model.num_head_layers=0", "1-4"]),
        ("clients_per_round=11", ["clients_per_round=11", "num_clients=10"]),
        ("num_rounds=0", ["num_rounds=0", "positive"]),
        ("num_epochs=-1", ["num_epochs=-1", "positive"]),
        ("batch_size=0", ["batch_size=0", "positive"]),
        ("learning_rate=0", ["learning_rate=0", "positive"]),
        ("learning_rate=-0.1", ["learning_rate=-0.1", "positive"]),
        ("algorithm=fedprox", ["algorithm=fedprox", "fedper", "fedavg"]),
        ("model_name=vgg", ["model_name=vgg", "mobile", "resnet"]),
        ("+dataset.name=mnist", []),
    ],
)
def test_each_bad_value_is_named_with_what_would_work(override, names):
    if override.startswith("+"):
        cfg = make_config(["dataset=digits"])
        cfg.dataset.name = "mnist"
        names = ["dataset=mnist", "digits", "cifar10"]
    else:
        cfg = make_config([override])
    with pytest.raises(ConfigError) as error:
        validate_config(cfg)
    for part in names:
        assert part in str(error.value)


def test_resnet_head_range_is_its_own():
    validate_config(make_config(["model_name=resnet", "model.num_head_layers=3"]))
    with pytest.raises(ConfigError, match="1-3"):
        validate_config(make_config(["model_name=resnet", "model.num_head_layers=4"]))


def test_defaults_follow_the_public_baseline():
    cfg = make_config()
    assert (cfg.dataset.name, cfg.model_name, cfg.algorithm) == ("cifar10", "mobile", "fedper")
    assert (cfg.num_clients, cfg.clients_per_round, cfg.num_rounds, cfg.num_epochs) == (
        10,
        10,
        50,
        4,
    )
    assert (cfg.batch_size, cfg.learning_rate, cfg.server_device) == (128, 0.01, "auto")
    assert cfg.dataset.image_size == 224 and cfg.dataset.seed == cfg.seed == 42
    assert make_config(["seed=5"]).dataset.seed == 5
    validate_config(cfg)
    validate_config(make_config([], config_name="cifar10"))


def test_cuda_requested_without_cuda_is_an_error_not_a_fallback():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ConfigError, match="server_device=cuda"):
        validate_config(make_config(["server_device=cuda"]))
    with pytest.raises(ConfigError, match="num_gpus=1"):
        validate_config(make_config(["client_resources.num_gpus=1"]))


def test_command_line_error_is_one_line_without_traceback_and_before_ray(tmp_path):
    result = run_main(
        tmp_path, ["dataset=digits", *TINY, "model.num_head_layers=9"], tmp_path / "run"
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr + result.stdout
    errors = [line for line in result.stderr.splitlines() if line.strip()]
    assert errors == [
        "fedper: error: model.num_head_layers=9 is out of range for model_name=mobile: use 1-4"
    ]
    assert not (tmp_path / "client_states").exists() and not (tmp_path / "datasets").exists()


def test_missing_dataset_is_one_line_naming_the_offline_option(tmp_path):
    result = run_main(tmp_path, [*TINY, "dataset.download=false"], tmp_path / "run")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "dataset=digits" in result.stderr and "cifar10 not found" in result.stderr
