"""Every registry entry composes into a config that passes all checks and runs one tiny round
in this process (the in-process harness: the ServerApp loop and the ClientApp handlers, no Ray).

A new algorithm, model, dataset, partition or engine is tested here as soon as it is registered;
a dataset that needs files needs a small copy in tests/helpers/datasets.py (DATA_FILES below).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import SMALL, make_config, run_local
from helpers.datasets import MINI_BOUNDS, write_cifar10, write_cifar100, write_mini_flickr

from fedper.algorithms import ALGORITHMS
from fedper.data import DATASETS
from fedper.data.partition import PARTITIONS
from fedper.engines import ENGINES
from fedper.experiment import check_start
from fedper.models import MODELS
from fedper.planning import plan_run
from fedper.results import load_results

# what a dataset that needs files is given here: its small copy, and settings that fit it
DATA_FILES = {
    "cifar10": (write_cifar10, ["dataset.image_size=32", "dataset.num_classes=2"]),
    "cifar100": (write_cifar100, ["dataset.image_size=32", "dataset.num_classes=5"]),
    "flickr": (write_mini_flickr, ["dataset.image_size=16", *MINI_BOUNDS]),
    "synthetic": (None, ["dataset.size=300"]),
}
# what an engine needs to be composed (its address; nothing answers there: no engine starts)
ENGINE_SETTINGS = {
    "ray": ["engine.address=127.0.0.1:6379"],
    "deployment": ["engine.superlink=127.0.0.1:9093"],
}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    """One data folder for the module: each dataset is built once, then read from its cache."""
    folder = tmp_path_factory.mktemp("datasets")
    for write, _ in DATA_FILES.values():
        if write is not None:
            write(folder)
    return folder


def one_round(tmp_path: Path, data_dir: Path, overrides: list[str]) -> dict:
    """Compose, check as a start does, plan, and run one round in this process."""
    cfg = make_config(
        [*SMALL, "num_rounds=1", f"data_dir={data_dir}", f"state_dir={tmp_path / 'states'}",
         *overrides]
    )  # fmt: skip
    check_start(cfg)
    run_local(plan_run(cfg, tmp_path / "run"))
    [entry] = load_results(tmp_path / "run")["rounds"]
    assert 0 <= entry["accuracy"] <= 1
    assert entry["clients_ok"] == cfg.num_clients and not entry["failures"]
    return entry


@pytest.mark.parametrize("name", list(ALGORITHMS))
def test_every_algorithm_runs_a_round(tmp_path, data_dir, name):
    one_round(tmp_path, data_dir, [f"algorithm={name}"])


@pytest.mark.parametrize("name", list(MODELS))
def test_every_model_runs_a_round(tmp_path, data_dir, name):
    one_round(tmp_path, data_dir, [f"model_name={name}", "model.num_head_layers=1"])


@pytest.mark.parametrize("name", list(DATASETS))
def test_every_dataset_runs_a_round(tmp_path, data_dir, name):
    _, settings = DATA_FILES.get(name, (None, []))
    one_round(tmp_path, data_dir, [f"dataset={name}", *settings])


@pytest.mark.parametrize("name", list(PARTITIONS))
def test_every_partition_runs_a_round(tmp_path, data_dir, name):
    one_round(tmp_path, data_dir, [f"partition={name}"])


@pytest.mark.parametrize("name", list(ENGINES))
def test_every_engine_composes_passes_its_checks_and_its_plan_runs_a_round(
    tmp_path, data_dir, name
):
    """The engines themselves start Ray or a SuperLink (tests/test_engines.py, slow); here each
    one's config composes and passes its checks, and the plan it would run runs a round."""
    one_round(tmp_path, data_dir, [f"engine={name}", *ENGINE_SETTINGS.get(name, [])])


def test_every_entry_has_a_display_label():
    for registry in (ALGORITHMS, MODELS, DATASETS, PARTITIONS, ENGINES):
        for name, entry in registry.items():
            assert entry.name == name and entry.label, (registry.key, name)
