"""`python -m fedper.bench` end to end on a tiny setting, and its arithmetic in-process.

No timing is asserted: machines are noisy. Only that every number is there and positive.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from helpers import make_config, newest_head

from fedper.bench.plain import LatestHeadStore, average, run_plain
from fedper.bench.report import (
    federated_breakdown,
    round_cost,
    steady,
    step_milliseconds,
    train_steps,
)
from fedper.bench.settings import BenchSettings
from fedper.bench.versus_plain import run_benchmark
from fedper.errors import ConfigError
from fedper.training import batch_slices

TINY_BENCH = [
    "dataset.size=600",
    "model.width_multiplier=0.25",
    "num_clients=2",
    "clients_per_round=2",
    "num_rounds=2",
    "batch_size=16",
    "bench.prep_pool_sizes=[600,300]",
    "bench.prep_client_size=100",
    "bench.prep_repeats=2",
]


def positive(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


@pytest.mark.slow
def test_bench_runs_end_to_end_and_writes_bench_json(tmp_path):
    """With no --config-name: the benchmark preset is the default."""
    run_dir = tmp_path / "bench_run"
    done = subprocess.run(
        [sys.executable, "-m", "fedper.bench", *TINY_BENCH, f"hydra.run.dir={run_dir}"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=900,
        env=os.environ.copy(),
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "ratio federated / plain" in done.stdout
    output = done.stdout + done.stderr
    for number in (1, 2, 3):  # the benchmark says which phase it is in
        assert f"phase {number} of 3: " in output and f"phase {number} of 3 done in " in output
    assert re.search(r"plain loop: round 1/\d+ .* elapsed \d+:\d\d, ETA ", output)
    assert "Ray actors (counted as Flower counts them): 2" in done.stdout

    report = json.loads((run_dir / "bench.json").read_text())
    assert {"scenario", "federated", "plain", "ratio", "client_data_preparation", "memory"} <= set(
        report
    )
    assert report["scenario"]["plain_mode"] == "parallel"
    assert report["scenario"]["num_clients"] == 2
    assert report["scenario"]["dataset"] == "synthetic"  # the preset, not base's CIFAR-10
    for side in ("federated", "plain"):
        part = report[side]
        assert len(part["round_seconds"]) == 2
        assert all(positive(s) for s in part["round_seconds"])
        for key in ("first_round_seconds", "round_seconds_after_first", "images_per_second",
                    "train_step_ms"):  # fmt: skip
            assert positive(part[key]), (side, key)
        assert 0 <= part["final_accuracy"] <= 1
    assert positive(report["ratio"]) and positive(report["ratio_first_round"])
    devices = report["plain"]["devices"]
    assert len(devices) == 2 and all(d["device"] == "cpu" for d in devices)
    assert report["gpu_check"] is None  # CPU: no GPU section

    overhead = report["federated"]["overhead"]["per_round"]
    assert set(overhead) == {
        "client_compute", "data_preparation", "model_setup", "head_save_load", "aggregation",
        "ray_messaging", "results_and_checkpoint",
    }  # fmt: skip
    assert positive(overhead["client_compute"]) and positive(overhead["head_save_load"])
    assert positive(overhead["aggregation"])

    preparation = report["client_data_preparation"]
    assert set(preparation) == {"600", "300"}
    for prep in preparation.values():
        assert prep["client_images"] == 100
        assert positive(prep["median_ms"]) and positive(prep["cold_median_ms"])

    memory = report["memory"]
    for key in ("peak_all_processes_bytes", "driver_ru_maxrss_bytes",
                "plain_peak_all_processes_bytes", "ray_helpers_rss_bytes"):  # fmt: skip
        assert positive(memory[key]), key
    # the driver, Ray's own processes and the workers were all counted
    assert memory["peak_processes"] > 2
    assert memory["peak_all_processes_bytes"] >= memory["driver_ru_maxrss_bytes"] * 0.5
    names = {p["name"] for p in memory["peak_rss_by_process_bytes"]}
    assert {"raylet", "gcs_server"} <= names
    # what fedper.engines stops after ray.init is gone before the clients run
    assert not names & {"monitor.py", "log_monitor.py", "dashboard.py"}
    # the plain loop's own processes, its workers among them, with no Ray process
    plain_names = {p["name"] for p in memory["plain_peak_rss_by_process_bytes"]}
    assert "python" in plain_names and not plain_names & {"raylet", "gcs_server"}
    cpu = report["cpu_seconds_by_process"]
    assert sum(cpu["federated"].values()) > 0 and sum(cpu["plain"].values()) > 0
    assert (run_dir / "federated" / "results.json").is_file()


def test_a_second_run_into_the_same_directory_is_refused(tmp_path):
    (tmp_path / "federated").mkdir()
    (tmp_path / "federated" / "results.json").write_text("{}")
    cfg = make_config(TINY_BENCH, config_name="bench")
    with pytest.raises(ConfigError, match="hydra.run.dir"):
        run_benchmark(cfg, tmp_path)


def test_the_federated_benchmark_measures_the_simulation_engine(tmp_path):
    cfg = make_config([*TINY_BENCH, "engine=ray", "engine.address=127.0.0.1:1"], "bench")
    with pytest.raises(ConfigError, match="bench=deployment"):
        run_benchmark(cfg, tmp_path)


def test_unknown_bench_settings_are_named():
    with pytest.raises(ConfigError, match="bench.plain_mod"):
        BenchSettings.from_config(make_config(["+bench.plain_mod=parallel"]))
    with pytest.raises(ConfigError, match="bench.plain_mode"):
        BenchSettings.from_config(make_config(["bench.plain_mode=threads"], "bench"))
    with pytest.raises(ConfigError, match="bench.mode"):
        BenchSettings.from_config(make_config(["bench.mode=fast"], "bench"))
    with pytest.raises(ConfigError, match="bench.repeats"):
        BenchSettings.from_config(make_config(["+bench.repeats=0"], "bench"))
    assert BenchSettings.from_config(make_config()) == BenchSettings()


def test_presets_compose():
    default = make_config([], "bench")
    assert (default.dataset.name, default.num_clients, default.bench.mode) == (
        "synthetic", 10, "federated")  # fmt: skip
    gpu = make_config(["bench=gpu"], "bench")
    assert (gpu.dataset.image_size, gpu.model_name, gpu.num_rounds, gpu.bench.mode) == (
        224, "mobile", 2, "gpu_check")  # fmt: skip
    deployment = make_config(["bench=deployment"], "bench")
    assert (deployment.dataset.name, deployment.num_clients, deployment.bench.mode) == (
        "digits", 2, "deployment")  # fmt: skip


def test_overhead_parts_add_up_to_the_round():
    rounds = [
        {
            "seconds": 99.0,
            "trained_clients": [],
            "clients_ok": 0,
            "timing": {"aggregate": 0.0, "train_clients": {}, "evaluate_clients": {}},
        },
        {
            "seconds": 10.0,
            "trained_clients": [0, 1, 2, 3],
            "clients_ok": 4,
            "timing": {
                "aggregate": 0.5,
                "train_clients": {"setup": 0.0, "data": 0.4, "state": 0.8, "compute": 12.0},
                "evaluate_clients": {"setup": 0.0, "data": 0.0, "state": 0.4, "compute": 2.0},
                "bookkeeping_before": 0.25,
            },
        },
    ]
    breakdown = federated_breakdown(rounds, actors=2)
    parts = breakdown["per_round"]
    assert parts["client_compute"] == pytest.approx(7.0)
    assert parts["head_save_load"] == pytest.approx(0.6)
    assert parts["results_and_checkpoint"] == pytest.approx(0.25)
    assert sum(parts.values()) == pytest.approx(10.25) == round_cost(rounds[1])
    assert breakdown["per_client_call"]["state"] == pytest.approx(1.2 / 8)
    assert breakdown["first_round"]["per_round"]["ray_messaging"] == pytest.approx(99.0)
    assert steady([1.0]) == [1.0] and steady([1.0, 2.0, 3.0]) == [2.0, 3.0]


def test_steps_are_counted_as_training_batches_them():
    cfg = make_config(["batch_size=16", "num_epochs=2"])
    partition = [{"cid": 0, "num_train": 33}, {"cid": 1, "num_train": 32}]
    rounds = [{"trained_clients": [0, 1]}, {"trained_clients": [1]}]
    # 33 = 16 + 17 (a last batch of one joins the one before), 32 = 16 + 16
    assert len(list(batch_slices(33, 16, torch.arange(33)))) == 2
    assert train_steps(cfg, partition, rounds) == [2 * (2 + 2), 2 * 2]
    # after the first round only: 0.6 s over 4 steps
    assert step_milliseconds([9.0, 0.6], [8, 4]) == pytest.approx(150.0)


def test_plain_average_weights_by_examples_and_keeps_the_largest_count():
    like = {"w": np.zeros(2, np.float32), "n": np.zeros((), np.int64)}
    replies = [
        {"examples": 1, "weighted": {"w": np.array([1.0, 1.0])}, "largest": {"n": np.array(4)}},
        {"examples": 3, "weighted": {"w": np.array([9.0, 3.0])}, "largest": {"n": np.array(12)}},
    ]
    mean = average(replies, like)
    assert mean["w"].dtype == np.float32 and mean["n"].dtype == np.int64
    # the server keeps the largest BatchNorm counter, not a weighted mean (which would be 10)
    assert mean["w"].tolist() == [2.5, 1.0] and int(mean["n"]) == 12


def test_the_plain_loop_keeps_only_each_clients_newest_head():
    store = LatestHeadStore()
    store.save(0, 1, {"w": torch.zeros(1)})
    store.save(0, 2, {"w": torch.ones(1)})
    assert newest_head(store, 0, before_round=3)["w"].item() == 1.0
    assert newest_head(store, 0, before_round=2) is None and list(store.heads[0]) == [2]


def test_plain_loop_repeats_the_client_apps_work(tmp_path):
    """Two rounds through the ClientApp (in process) and through the plain loop agree: the
    same client core, and the server's aggregation between the rounds."""
    from helpers import plan_local, run_local

    from fedper import client

    plan = plan_local(tmp_path, ["dataset=synthetic", "dataset.size=240", "num_clients=2",
                                 "clients_per_round=2", "num_rounds=2", "batch_size=16"])  # fmt: skip
    federated = run_local(plan).rounds
    client._WORKERS.clear()
    plain = run_plain(plan.spec.to_json(), {"rounds": federated}, workers=2, parallel=False)
    for fed_round, plain_round in zip(federated, plain["rounds"], strict=True):
        assert plain_round["accuracy"] == pytest.approx(fed_round["accuracy"])
        assert plain_round["loss"] == pytest.approx(fed_round["loss"], rel=1e-5)
        assert plain_round["train_compute"] > 0 and plain_round["evaluate_compute"] > 0
    assert plain["workers"] == 2
    assert plain["devices"][0]["device"] == "cpu"
    assert plain["devices"][0]["performance"]  # the switches the client core resolved
