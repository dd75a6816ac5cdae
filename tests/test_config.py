"""Bad settings: one clear message naming the key and what would work, before Ray starts."""

import os

import pytest
from helpers import TINY, make_config, run_main

from fedper.errors import ConfigError
from fedper.experiment import check_start
from fedper.validation import validate_config


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("dataset.num_classes=11", "dataset.num_classes=11 is out of range (classes per client) for cifar10: use 1-10"),
        ("dataset.num_classes=0", "dataset.num_classes=0 is out of range (classes per client) for cifar10: use 1-10"),
        ("model.num_head_layers=5", "model.num_head_layers=5 is out of range for model_name=mobile: use 1-4"),
        ("model.num_head_layers=0", "model.num_head_layers=0 is out of range for model_name=mobile: use 1-4"),
        ("clients_per_round=11", "clients_per_round=11 is out of range for num_clients=10: use 1-10"),
        ("num_rounds=0", "num_rounds=0 is out of range: use a whole number >= 1"),
        ("num_rounds=true", "num_rounds=true is not a whole number: use a whole number >= 1"),
        ("num_rounds=2.5", "num_rounds=2.5 is not a whole number: use a whole number >= 1"),
        ("num_epochs=-1", "num_epochs=-1 is out of range: use a whole number >= 1"),
        ("batch_size=0", "batch_size=0 is out of range: use a whole number >= 1"),
        ("seed=-1", "seed=-1 is out of range: use a whole number >= 0"),
        ("learning_rate=0", "learning_rate=0 is out of range: use a number > 0"),
        ("learning_rate=-0.1", "learning_rate=-0.1 is out of range: use a number > 0"),
        ("learning_rate=true", "learning_rate=true is not a number: use a number > 0"),
        ("momentum=abc", "momentum=abc is not a number: use a number in [0, 1)"),
        ("momentum=1", "momentum=1 is out of range: use a number in [0, 1)"),
        ("weight_decay=-1", "weight_decay=-1 is out of range: use a number >= 0"),
        ("finetune_epochs=-1", "finetune_epochs=-1 is out of range: use a whole number >= 0"),
        ("min_successful_clients=0", "min_successful_clients=0 is out of range for clients_per_round=10: use 1-10"),
        ("evaluate_every=0", "evaluate_every=0 is out of range: use a whole number >= 1"),
        ("clients_per_evaluation=11", "clients_per_evaluation=11 is out of range for num_clients=10 (null: every client): use 1-10"),
        ("model.width_multiplier=0", "model.width_multiplier=0 is out of range: use a number > 0"),
        ("performance.data_on_device=maybe", "performance.data_on_device=maybe must be true or false"),
        ("dataset.download=yes", "dataset.download=yes is not true or false: use true or false"),
        ("dataset.fraction=1", "dataset.fraction=1 is out of range: use a number strictly between 0 and 1"),
        ("faults.fail_phase=fit", "faults.fail_phase=fit is unknown: use one of train, evaluate"),
        ("faults.fail_client=10", "faults.fail_client=10 is out of range for num_clients=10: use 0-9"),
        ("faults.hold_round=0", "faults.hold_round=0 is out of range: use a whole number >= 1"),
        ("faults.hold_round=2", "faults.hold_round needs faults.hold_until=<a file the test creates to release the clients>"),
        ("engine.reply_timeout=0", "engine.reply_timeout=0 is out of range: use a number of seconds > 0"),
        ("algorithm=fedprox", "algorithm=fedprox is unknown: use one of fedper, fedavg, fedavg_ft, local, fedrep, lg_fedavg, fedbn (did you mean algorithm=fedper?)"),
        ("model_name=vgg", "model_name=vgg is unknown: use one of mobile, resnet"),
        ("+num_round=5", "num_round is not a fedper setting: did you mean num_rounds=5? (every setting: python -m fedper.main --help, or conf/base.yaml)"),
        ("+dataset.size=5", "dataset.size is not a setting of the chosen dataset: only dataset=synthetic has it"),
        ("+model.depth=5", "model.depth is not a fedper setting (every setting: python -m fedper.main --help, or conf/base.yaml)"),
    ],
)  # fmt: skip
def test_each_bad_value_is_named_with_what_would_work(override, message):
    with pytest.raises(ConfigError) as error:
        validate_config(make_config([override]))
    assert str(error.value) == message


def test_an_unknown_dataset_name_lists_the_known_ones():
    cfg = make_config(["dataset=digits"])
    cfg.dataset.name = "mnist"
    with pytest.raises(ConfigError, match="dataset=mnist is unknown: use one of .*digits"):
        validate_config(cfg)


def test_a_folder_setting_naming_a_file_is_refused(tmp_path):
    a_file = tmp_path / "notes.txt"
    a_file.write_text("mine")
    for key in ("data_dir", "state_dir"):
        with pytest.raises(ConfigError) as error:
            validate_config(make_config([f"{key}={a_file}"]))
        assert str(error.value) == (
            f"{key}={a_file} is a file, not a folder: name a folder (created if missing)"
        )
    inside = a_file / "datasets"
    with pytest.raises(ConfigError) as error:
        validate_config(make_config([f"data_dir={inside}"]))
    assert str(error.value) == (
        f"data_dir={inside} cannot be created ({a_file} is a file): name a folder you can write"
    )
    validate_config(make_config([f"data_dir={tmp_path / 'new' / 'datasets'}"]))
    assert not (tmp_path / "new").exists(), "checking a folder must not create it"


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_a_folder_that_cannot_be_created_is_refused(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    with pytest.raises(ConfigError, match=f"state_dir={locked}/s cannot be created .*not writable"):
        check_start(make_config([f"state_dir={locked}/s"]))


def test_resnet_head_range_is_its_own():
    validate_config(make_config(["model_name=resnet", "model.num_head_layers=3"]))
    with pytest.raises(ConfigError, match="1-3"):
        validate_config(make_config(["model_name=resnet", "model.num_head_layers=4"]))


def test_every_preset_and_dataset_passes():
    for name in ("base", "cifar10", "flickr", "bench"):
        validate_config(make_config([], config_name=name))
    for dataset in ("cifar10", "cifar100", "digits", "flickr", "synthetic"):
        validate_config(make_config([f"dataset={dataset}"]))
    validate_config(make_config(["experiment=digits_demo"]))
    validate_config(make_config(["engine=ray", "engine.address=127.0.0.1:6379"]))
    for logger in ("none", "csv", "[csv,tensorboard]"):  # none: an option without keys
        validate_config(make_config([f"logger={logger}"]))


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


def test_every_sampled_client_must_succeed_by_default():
    assert make_config().min_successful_clients == 10
    assert make_config(["clients_per_round=4"]).min_successful_clients == 4
    assert make_config(["min_successful_clients=2"]).min_successful_clients == 2


def test_cuda_requested_without_cuda_is_an_error_not_a_fallback():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ConfigError, match="server_device=cuda"):
        validate_config(make_config(["server_device=cuda"]))
    with pytest.raises(ConfigError, match="num_gpus=1"):
        validate_config(make_config(["client_resources.num_gpus=1"]))


@pytest.mark.slow
@pytest.mark.parametrize(
    ("override", "line"),
    [
        ("model.num_head_layers=9", "model.num_head_layers=9 is out of range for model_name=mobile: use 1-4"),
        ("num_rounds=true", "num_rounds=true is not a whole number: use a whole number >= 1"),
        ("+learning_rte=0.1", "learning_rte is not a fedper setting: did you mean learning_rate=0.1? (every setting: python -m fedper.main --help, or conf/base.yaml)"),
    ],
)  # fmt: skip
def test_command_line_error_is_one_line_before_ray_and_leaves_no_folder(tmp_path, override, line):
    result = run_main(tmp_path, ["dataset=digits", *TINY, override], tmp_path / "run")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr + result.stdout
    errors = [line for line in result.stderr.splitlines() if line.strip()]
    assert errors == [f"fedper: error: {line}"]
    assert not (tmp_path / "client_states").exists() and not (tmp_path / "datasets").exists()
    assert list(tmp_path.iterdir()) == []  # not even Hydra's run folder


@pytest.mark.slow
def test_missing_dataset_is_one_line_naming_the_archive_and_in_the_log(tmp_path):
    result = run_main(tmp_path, [*TINY, "dataset.download=false"], tmp_path / "run")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "dataset=digits" in result.stderr and "cifar10 not found" in result.stderr
    archive = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
    assert archive in result.stderr
    assert f"{archive} and extract" in (tmp_path / "run" / "main.log").read_text()


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["engine=ray"], "engine=ray needs engine.address=<host:port> of the Ray cluster's head node"),
        (["engine=deployment", "engine.superlink=nowhere"],
         "engine=deployment needs engine.superlink=<host:port> of the SuperLink, not nowhere"),
        (["engine.num_cpus=0"],
         "engine.num_cpus=0 is out of range: use null (all CPUs) or a whole number > 0"),
        (["engine.name=warp"], "engine=warp is unknown: use one of simulation, ray, deployment"),
        (["engine.max_nodes=0"],
         "engine.max_nodes=0 is out of range: use a whole number > 0 (nodes the simulation starts;"
         " each serves clients in turn when there are more), or null for one node per client"),
    ],
)  # fmt: skip
def test_each_engine_checks_its_own_keys_once_per_start(overrides, message):
    validate_config(make_config(overrides))  # the generic checks leave them to the engine
    with pytest.raises(ConfigError) as error:
        check_start(make_config(overrides))
    assert str(error.value) == message
