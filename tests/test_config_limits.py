"""Settings that could only fail at run time, or that numpy, torch or Ray would not take, are
refused by the checks that run before any data or Ray work, in one line naming the key."""

from __future__ import annotations

import pytest
from helpers import SMALL, TINY, make_config, run_main

from fedper.data import prepare_dataset
from fedper.errors import ConfigError
from fedper.experiment import check_start

BIG = 2**64  # one more than the largest unsigned 64-bit number


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (f"seed={BIG}", f"seed={BIG} is out of range: use a whole number in 0-{2**63 - 1}"),
        (f"dataset.seed={BIG}", f"dataset.seed={BIG} is out of range: use a whole number in 0-{2**63 - 1}"),
        (f"num_rounds={BIG}", f"num_rounds={BIG} is out of range: use a whole number in 1-{2**63 - 1}"),
        (f"num_epochs={BIG}", f"num_epochs={BIG} is out of range: use a whole number in 1-{2**63 - 1}"),
        (f"engine.num_cpus={2**62}", f"engine.num_cpus={2**62} is out of range: use null (all CPUs) or a whole number in 1-{10**14}"),
        ("dataset.image_size=100000", "dataset.image_size=100000 is out of range: use a whole number in 1-2048"),
        ("model.width_multiplier=1000", "model.width_multiplier=1000 is out of range: use a number in (0, 4]"),
    ],
)  # fmt: skip
def test_numbers_numpy_torch_or_ray_would_not_take_are_refused(override, message):
    with pytest.raises(ConfigError) as error:
        check_start(make_config(["dataset=digits", override]))
    assert str(error.value) == message


def test_the_largest_seed_numpy_and_torch_take_is_accepted(tmp_path):
    cfg = make_config([*SMALL, f"seed={2**63 - 1}", f"data_dir={tmp_path}"])
    check_start(cfg)
    assert len(prepare_dataset(cfg).clients) == 3


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["batch_size=1"], "batch_size=1 cannot train model_name=mobile at dataset.image_size=32: "
         "its last BatchNorm layers see 1x1 maps and need 2 examples per batch: use batch_size>=2 "
         "(or dataset.image_size>=33)"),
        (["batch_size=1", "model_name=resnet", "model.num_head_layers=1"], "batch_size=1 cannot "
         "train model_name=resnet at dataset.image_size=32: its last BatchNorm layers see 1x1 maps "
         "and need 2 examples per batch: use batch_size>=2 (or dataset.image_size>=33)"),
        (["dataset.total_classes=8", "partition=iid"], "dataset.total_classes=8 is below the 10 "
         "classes of digits, all of which partition=iid gives to clients: use "
         "dataset.total_classes=10 (partition=pathological draws from classes 0-7 only)"),
        (["dataset.total_classes=9", "partition=dirichlet"], "dataset.total_classes=9 is below the "
         "10 classes of digits, all of which partition=dirichlet gives to clients: use "
         "dataset.total_classes=10 (partition=pathological draws from classes 0-8 only)"),
        (["num_clients=700", "clients_per_round=10"], "num_clients=700 is more than digits can "
         "feed: its 1797 images give at most 599 clients the 3 each needs (2 to train, 1 to "
         "test): use num_clients<=599"),
        (["engine.num_cpus=1", "client_resources.num_cpus=2"], "client_resources.num_cpus=2 is "
         "more than engine.num_cpus=1 gives the run's Ray: no client could start; use "
         "client_resources.num_cpus<=1 or raise engine.num_cpus"),
    ],
)  # fmt: skip
def test_settings_that_would_fail_in_every_client_are_refused_before_work(overrides, message):
    with pytest.raises(ConfigError) as error:
        check_start(make_config(["dataset=digits", *overrides]))
    assert str(error.value) == message


def test_what_the_refusals_leave_alone_still_runs():
    for overrides in (
        ["batch_size=1", "dataset.image_size=64"],  # 2x2 maps: BatchNorm has 4 values
        ["dataset.total_classes=8"],  # the paper's split draws from classes 0-7
        ["dataset.total_classes=12", "partition=iid"],  # unused outputs are harmless
        ["num_clients=599", "clients_per_round=10"],
    ):
        check_start(make_config(["dataset=digits", *overrides]))


def test_flickr_needs_a_class_per_score():
    with pytest.raises(ConfigError) as error:
        check_start(make_config(["dataset=flickr", "dataset.total_classes=4"]))
    assert str(error.value) == (
        "dataset.total_classes=4 is below FLICKR-AES's 5 scores (1-5, each a class): use "
        "dataset.total_classes=5"
    )


def test_labels_beyond_total_classes_found_in_the_data_are_one_line(tmp_path, monkeypatch):
    """A dataset registered without its label count is checked once its labels are read."""
    from fedper.data import registry

    digits = registry.DATASETS["digits"]
    unknown = registry.Dataset("digits", digits.label, digits.build)  # no counts declared
    monkeypatch.setitem(registry.DATASETS._entries, "digits", unknown)
    cfg = make_config([*SMALL, "partition=iid", "dataset.total_classes=8", f"data_dir={tmp_path}"])
    with pytest.raises(ConfigError) as error:
        prepare_dataset(cfg)
    assert str(error.value) == (
        "dataset.total_classes=8 is below the labels of digits, which go up to 9, all of which "
        "partition=iid gives to clients: use dataset.total_classes=10"
    )


@pytest.mark.slow
def test_an_integer_torch_cannot_take_is_one_line_on_the_command_line(tmp_path):
    result = run_main(tmp_path, ["dataset=digits", *TINY, f"seed={BIG}"], tmp_path / "run")
    assert result.returncode == 2 and "Traceback" not in result.stdout + result.stderr
    assert result.stderr.splitlines() == [
        f"fedper: error: seed={BIG} is out of range: use a whole number in 0-{2**63 - 1}"
    ]
