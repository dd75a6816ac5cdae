"""docs/extending.md works as written: its Python blocks add a toy algorithm, model, dataset and
engine through the public registries, and a run with all four goes through `run_experiment`."""

from __future__ import annotations

import re

import pytest
from helpers import ROOT, make_config

from fedper.algorithms import ALGORITHMS
from fedper.data import DATASETS
from fedper.engines import ENGINES
from fedper.errors import ConfigError
from fedper.experiment import check_start, run_experiment
from fedper.heads import DiskHeadStore
from fedper.models import MODELS
from fedper.plot.display import algorithm_label, dataset_label, model_label

GUIDE = ROOT / "docs" / "extending.md"
TOYS = [(ALGORITHMS, "fedper_bn"), (MODELS, "tiny"), (DATASETS, "stripes"),
        (ENGINES, "in_process")]  # fmt: skip
# the toys' settings; conf/ has no files for the toy dataset and engine, so their sections
# start from the built-in ones and take the toy's name (every key stays a known one)
TOY_RUN = [
    "algorithm=fedper_bn",
    "model_name=tiny",
    "model.num_head_layers=1",
    "dataset=digits",
    "dataset.name=stripes",
    "dataset.total_classes=4",
    "dataset.num_classes=2",
    "dataset.image_size=16",
    "engine.name=in_process",
    "num_clients=3",
    "clients_per_round=3",
    "num_rounds=2",
    "batch_size=16",
    "client_device=cpu",
]


@pytest.fixture(scope="module")
def guide():
    """The guide's Python blocks, run in order; its toys are unregistered afterwards."""
    blocks = re.findall(r"```python\n(.*?)```", GUIDE.read_text(), re.S)
    assert len(blocks) == 4, "one example each: algorithm, model, dataset, engine"
    namespace: dict = {}
    try:
        for block in blocks:
            exec(compile(block, str(GUIDE), "exec"), namespace)
        yield namespace
    finally:
        for registry, name in TOYS:
            if name in registry:
                registry.remove(name)


def test_each_toy_is_registered_with_its_label(guide):
    for registry, name in TOYS:
        assert registry[name].name == name and registry[name].label
    assert algorithm_label("fedper_bn") == "FedPer+BN"
    assert model_label("tiny") == "tiny CNN" and dataset_label("stripes") == "stripes"


def test_a_run_of_the_four_toys_goes_through_the_public_path(guide, tmp_path):
    overrides = [*TOY_RUN, f"data_dir={tmp_path / 'data'}", f"state_dir={tmp_path / 'heads'}"]
    results = run_experiment(make_config(overrides), tmp_path / "run", overrides)
    assert [r["round"] for r in results["rounds"]] == [1, 2]
    assert results["config"]["engine"]["name"] == "in_process"
    assert all(0 <= r["accuracy"] <= 1 and r["clients_ok"] == 3 for r in results["rounds"])
    # the toy algorithm keeps the toy model's BatchNorm layer (base.1) with the head
    kept = DiskHeadStore(tmp_path / "heads" / results["run_id"], results["run_id"]).load_version(
        0, 3
    )
    assert kept is not None and {"base.1.weight", "base.1.running_mean"} <= set(kept[1])
    assert not any(key.startswith("base.0.") for key in kept[1])  # the convolution is shared


def test_a_toy_is_checked_like_the_built_in_ones(guide):
    with pytest.raises(ConfigError, match="model.num_head_layers=3 is out of range .*: use 1-2"):
        check_start(make_config([*TOY_RUN, "model.num_head_layers=3"]))
    with pytest.raises(ConfigError, match="algorithm=fedper_bm is unknown: use one of .*fedper_bn"):
        check_start(make_config([*TOY_RUN, "algorithm=fedper_bm"]))
