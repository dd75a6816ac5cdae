"""FedPer's family: exactly which arrays leave a client, which stay, and how each trains."""

from __future__ import annotations

import pytest
import torch
from helpers import make_config, newest_head, plan_local, run_local

from fedper import client
from fedper.algorithms import ALGORITHMS
from fedper.client import worker_for
from fedper.models import build_model
from fedper.node import NodePaths
from fedper.planning import unused_settings

BATCHNORM_STATS = ("running_mean", "running_var", "num_batches_tracked")


pytestmark = pytest.mark.usefixtures("fresh_worker")


def batchnorm_keys(model, part=None, stats_only=False):
    """BatchNorm keys found by walking the modules (independently of ModelSplit's helper)."""
    keys = set()
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.BatchNorm2d) and (part is None or name.startswith(part)):
            kinds = BATCHNORM_STATS if stats_only else (*BATCHNORM_STATS, "weight", "bias")
            keys.update(f"{name}.{kind}" for kind in kinds)
    return keys


def expected_shared(algorithm, model, local_bn=False):
    everything = set(model.state_dict())
    base = {k for k in everything if k.startswith("base.")}
    head = everything - base
    return {
        "fedper": base - (batchnorm_keys(model, "base", stats_only=True) if local_bn else set()),
        "fedrep": base,
        "fedavg": everything,
        "fedavg_ft": everything,
        "local": set(),
        "lg_fedavg": head,
        "fedbn": everything - batchnorm_keys(model),
    }[algorithm]


CASES = [
    ("fedper", []), ("fedper", ["model.local_bn=true"]), ("fedrep", []), ("fedavg", []),
    ("fedavg_ft", []), ("local", []), ("lg_fedavg", []), ("fedbn", []),
    ("fedbn", ["model_name=resnet", "dataset.image_size=32", "model.num_head_layers=2"]),
]  # fmt: skip


@pytest.mark.parametrize(("algorithm", "extra"), CASES)
def test_what_leaves_the_client_and_what_stays_is_what_it_saved(tmp_path, algorithm, extra):
    plan = plan_local(tmp_path, [f"algorithm={algorithm}", "num_clients=2",
                                 "clients_per_round=2", *extra])  # fmt: skip
    cfg = plan.spec.cfg
    initial = build_model(cfg, seed=cfg.seed)
    shared = expected_shared(algorithm, initial, "model.local_bn=true" in extra)
    personal = set(initial.state_dict()) - shared
    worker = worker_for(plan.spec, NodePaths.of(plan.spec, {}))
    sent = initial.state_of(sorted(shared, key=list(initial.state_dict()).index))

    result = worker.train(0, 1, sent)
    assert set(result.shared) == shared  # exactly these arrays leave the client
    saved = newest_head(worker.store, 0, before_round=2)
    if personal:
        # what stays is exactly the rest, and it is the trained model's state, saved
        assert set(saved) == personal
        state = worker.model.state_dict()
        assert all(torch.equal(saved[k], state[k].cpu()) for k in personal)
        # the next round starts from what was saved, whatever else the worker did meanwhile
        worker.train(1, 1, sent)
        model, _ = worker.prepare_model(0, sent, before_round=2)
        assert all(torch.equal(model.state_dict()[k].cpu(), saved[k]) for k in personal)
    else:
        assert saved is None


def test_fedrep_trains_the_head_first_with_the_base_frozen_then_the_base(tmp_path, monkeypatch):
    plan = plan_local(tmp_path, ["algorithm=fedrep", "fedrep.head_epochs=2", "num_epochs=1"])
    worker = worker_for(plan.spec, NodePaths.of(plan.spec, {}))
    model = worker.model
    calls = []
    real_train = client.train

    def recording(model_, images, labels, transform, settings, generator, parameters, frozen):
        trained = {id(p) for p in parameters}
        part = "head" if trained == {id(p) for p in model.head.parameters()} else "base"
        assert frozen is None  # weights frozen only: BatchNorm keeps batch statistics
        calls.append((part, settings.epochs))
        return real_train(
            model_, images, labels, transform, settings, generator, parameters, frozen
        )

    monkeypatch.setattr(client, "train", recording)
    shared = build_model(plan.spec.cfg, seed=42).state_of(worker.shared_keys)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    worker.train(0, 1, shared)
    assert calls == [("head", 2), ("base", 1)]
    after = model.state_dict()
    changed = {k for k in before if k.endswith("weight") and not torch.equal(before[k], after[k])}
    assert any(k.startswith("head.") for k in changed) and any(
        k.startswith("base.") for k in changed
    )
    # both phases train in training mode: every BatchNorm's running statistics moved
    stats = {k for k in before if k.endswith("running_mean")}
    assert stats and all(not torch.equal(before[k], after[k]) for k in stats)


def test_fedrep_without_head_epochs_leaves_the_head_weights_untouched(tmp_path):
    plan = plan_local(tmp_path, ["algorithm=fedrep", "fedrep.head_epochs=0"])
    worker = worker_for(plan.spec, NodePaths.of(plan.spec, {}))
    shared = build_model(plan.spec.cfg, seed=42).state_of(worker.shared_keys)
    worker.train(0, 1, shared)
    saved = newest_head(worker.store, 0, before_round=2)
    initial = worker.initial
    weights = {name for name, _ in worker.model.named_parameters()}
    head = [k for k in saved if k.startswith("head.") and k in weights]
    assert head and all(torch.equal(saved[k], initial[k]) for k in head)


@pytest.mark.slow  # 21 runs in process: about 20 s
def test_every_algorithm_runs_a_round_under_every_partitioner(tmp_path):
    for partition in ("pathological", "dirichlet", "iid"):
        for algorithm in ALGORITHMS:
            plan = plan_local(
                tmp_path,
                [f"algorithm={algorithm}", f"partition={partition}", "num_rounds=1"],
                f"{partition}_{algorithm}",
            )
            (entry,) = run_local(plan).rounds
            assert entry["clients_ok"] == 3 and 0 <= entry["accuracy"] <= 1
            client._WORKERS.clear()


@pytest.mark.parametrize(
    ("overrides", "unused"),
    [
        ([], ["finetune_epochs", "fedrep.head_epochs"]),
        (
            ["model_name=resnet"],
            ["model.width_multiplier", "finetune_epochs", "fedrep.head_epochs"],
        ),
        (["algorithm=fedavg_ft"], ["fedrep.head_epochs"]),
        (["algorithm=fedrep"], ["finetune_epochs"]),
    ],
)
def test_results_name_the_settings_a_run_ignores(overrides, unused):
    assert unused_settings(make_config(overrides)) == unused
