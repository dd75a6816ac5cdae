"""The Deployment Engine's cost: Flower's polling read from its code, the cold-start split,
and (slow) the whole bench on loopback with no process left behind."""

from __future__ import annotations

import json
import time

import pytest
from helpers import make_config

from fedper.bench.deployment import (
    flower_polling,
    format_deployment,
    run_deployment_bench,
    sleeps_in,
    with_engine,
)
from fedper.bench.sampling import psutil_module
from fedper.bench.startup import import_chains, measure_cold_start, split
from fedper.planning import plan_run
from fedper.validation import validate_config

TINY = ["bench=deployment", "num_rounds=2", "bench.cold_starts=1"]

IMPORTTIME = """\
import time: self [us] | cumulative | imported package
import time:       100 |        100 |       numpy.core
import time:       200 |        300 |     numpy
import time:        50 |         50 |       sklearn.base
import time:       400 |        450 |     sklearn
import time:      1000 |       1750 |   fedper.data.digits
import time:        30 |       1780 | fedper.data
import time:         5 |          5 | hydra
"""


def test_import_chains_name_who_imported_a_heavy_module():
    found = import_chains(IMPORTTIME)
    assert found["sklearn"] == {"chain": ["fedper.data", "fedper.data.digits", "sklearn"],
                                "seconds": 450e-6}  # fmt: skip
    assert found["hydra"]["chain"] == ["hydra"]
    assert "numpy" not in found and "pandas" not in found


def waits() -> None:
    time.sleep(3)
    if waits:
        time.sleep(0.5)


def test_sleeps_are_read_from_the_source():
    assert sleeps_in(__name__, "waits") == [0.5, 3]


def test_flowers_polling_is_reported_from_the_installed_flower():
    polls = {p["where"]: p for p in flower_polling()}
    supernode = polls["flwr.supernode.start_client_internal.start_client_internal"]
    assert supernode["seconds"] and all(s > 0 for s in supernode["seconds"])
    assert polls["flwr.supercore.superexec.run_superexec"]["seconds"][0] > 0
    assert polls["fedper.link.POLL_SECONDS"]["seconds"] == [0.02]


def test_the_engine_group_is_switched_as_an_override_would():
    cfg = make_config(["bench=deployment"], "bench")
    deployment = with_engine(cfg, "deployment", superlink="127.0.0.1:9092")
    validate_config(deployment)
    assert (deployment.engine.name, deployment.engine.superlink) == ("deployment", "127.0.0.1:9092")
    assert "num_cpus" not in deployment.engine  # the simulation's keys are gone
    assert with_engine(deployment, "simulation").engine.name == "simulation"
    assert cfg.engine.name == "simulation"  # the original is untouched


def test_a_cold_start_splits_into_parts_that_add_up():
    run = {
        "parts": {"interpreter_start": 0.02, "flower_imports": 0.5, "torch_import": 0.9,
                  "fedper_imports": 0.1, "partition_from_cache": 0.03, "model_build": 0.01,
                  "worker_setup": 0.06},
        "calls": [{"message_seconds": 0.01, "handler_seconds": 1.0, "seconds_data": 0.002,
                   "seconds_state": 0.01, "seconds_compute": 0.9},
                  {"message_seconds": 0.01, "handler_seconds": 0.4, "seconds_compute": 0.35}],
    }  # fmt: skip
    parts = split(run)
    assert parts["worker_other"] == pytest.approx(0.02)
    assert parts["handler_other"] == pytest.approx(1.0 - 0.06 - 0.912)
    # the first call trained 0.55 s longer than the same training warm
    assert parts["first_call_extra"] == pytest.approx(0.55)
    assert parts["train_compute_warm"] == pytest.approx(0.35)
    handler = sum(parts[k] for k in ("partition_from_cache", "partition_fingerprint",
                                     "model_build", "initial_model_digest", "worker_other",
                                     "client_data", "head_load_save", "handler_other",
                                     "first_call_extra", "train_compute_warm"))  # fmt: skip
    assert handler == pytest.approx(1.0)


@pytest.mark.slow
def test_a_cold_start_is_measured_in_fresh_processes(tmp_path):
    cfg = make_config([*TINY, f"data_dir={tmp_path / 'datasets'}",
                       f"state_dir={tmp_path / 'states'}"], "bench")  # fmt: skip
    spec = plan_run(cfg, tmp_path / "run").spec
    node = {"partition-id": 1, "num-partitions": 2, "data-dir": str(tmp_path / "node" / "data"),
            "state-dir": str(tmp_path / "node" / "states")}  # fmt: skip
    (tmp_path / "node" / "data").mkdir(parents=True)
    cold = measure_cold_start(spec, node, tmp_path / "cold", repeats=1)
    for key in ("torch_import", "fedper_imports", "partition_from_cache", "model_build",
                "train_compute_warm"):  # fmt: skip
        assert cold["parts"][key] > 0, key
    assert cold["ours_seconds"] > cold["parts"]["torch_import"]
    assert cold["first_train_call_seconds"] > 0 and cold["warm_train_call_seconds"] > 0
    assert isinstance(cold["heavy_imports"], dict)
    # the training step uses torch's functional SGD: the first call imports no torch._dynamo
    assert "torch._dynamo" not in cold["first_call_imports"]
    # the node's head is written under its own state-dir
    assert list((tmp_path / "node" / "states").rglob("client_1.pt"))


def processes_mentioning(text: str) -> list[int]:
    psutil = psutil_module()
    found = []
    for process in psutil.process_iter(["pid", "cmdline"]):
        if any(text in arg for arg in process.info["cmdline"] or []):
            found.append(process.info["pid"])
    return found


@pytest.mark.slow
def test_the_deployment_bench_runs_on_loopback_and_leaves_nothing_behind(tmp_path):
    # 3 rounds: round 2 is a middle round, the one a long run repeats
    cfg = make_config([*TINY, "num_rounds=3", f"data_dir={tmp_path / 'datasets'}",
                       f"state_dir={tmp_path / 'states'}"], "bench")  # fmt: skip
    report = run_deployment_bench(cfg, tmp_path / "bench")
    assert report["same_per_client_metrics"]
    for engine in ("simulation", "deployment_separate", "deployment", "deployment_warm"):
        (run,) = report["engines"][engine]["runs"]
        assert len(run["round_seconds"]) == 3 and all(s > 0 for s in run["round_seconds"])
    assert report["ratio_deployment_over_simulation"] > 0
    assert report["ratio_warm_over_simulation"] > 0
    # round 1's evaluation rode in round 2's training messages: one message kind fewer
    folded = report["deployment_round_split"]
    assert folded["process_start"] < report["separate_round_split"]["process_start"]
    assert report["warm_round_split"]["process_start"] == 0  # forked warm: in the rest
    assert json.loads((tmp_path / "bench" / "bench.json").read_text())["cold_start"]
    assert "deployment / simulation" in format_deployment(report)
    # every SuperNode trained under its own state-dir, one head file per deployment run
    for federation, runs in (("federation", 2), ("federation_warm", 1)):
        for cid in range(2):
            node = tmp_path / "bench" / federation / f"node{cid}"
            assert [p.name for p in node.rglob("*.pt")] == [f"client_{cid}.pt"] * runs
    assert processes_mentioning(str(tmp_path)) == []
