"""`python -m fedper.bench` end to end on a tiny setting, and its arithmetic in-process.

No timing is asserted: machines are noisy. Only that every number is there and positive.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from fedper.bench import BenchSettings, average, federated_breakdown, round_cost, steady
from fedper.errors import ConfigError
from tests.conftest import make_config

TINY_BENCH = [
    "--config-name",
    "bench",
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


def test_bench_runs_end_to_end_and_writes_bench_json(tmp_path):
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

    report = json.loads((run_dir / "bench.json").read_text())
    assert {"scenario", "federated", "plain", "ratio", "client_data_preparation", "memory"} <= set(
        report
    )
    assert report["scenario"]["plain_mode"] == "parallel"
    assert report["scenario"]["num_clients"] == 2
    for side in ("federated", "plain"):
        part = report[side]
        assert len(part["round_seconds"]) == 2
        assert all(positive(s) for s in part["round_seconds"])
        for key in ("first_round_seconds", "round_seconds_after_first", "images_per_second"):
            assert positive(part[key]), (side, key)
        assert 0 <= part["final_accuracy"] <= 1
    assert positive(report["ratio"]) and positive(report["ratio_first_round"])

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
    for key in (
        "peak_all_processes_bytes",
        "driver_ru_maxrss_bytes",
        "plain_peak_all_processes_bytes",
    ):
        assert positive(memory[key]), key
    # the driver, Ray's own processes and the workers were all counted
    assert memory["peak_processes"] > 2
    assert memory["peak_all_processes_bytes"] >= memory["driver_ru_maxrss_bytes"] * 0.5
    cpu = report["cpu_seconds_by_process"]
    assert sum(cpu["federated"].values()) > 0 and sum(cpu["plain"].values()) > 0
    assert (run_dir / "federated" / "results.json").is_file()


def test_a_second_run_into_the_same_directory_is_refused(tmp_path):
    from fedper.bench import run_benchmark

    (tmp_path / "federated").mkdir()
    (tmp_path / "federated" / "results.json").write_text("{}")
    cfg = make_config(TINY_BENCH[2:], config_name="bench")
    with pytest.raises(ConfigError, match="hydra.run.dir"):
        run_benchmark(cfg, tmp_path)


def test_unknown_bench_settings_are_named():
    with pytest.raises(ConfigError, match="bench.plain_mod"):
        BenchSettings.from_config(make_config(["+bench.plain_mod=parallel"]))
    with pytest.raises(ConfigError, match="bench.plain_mode"):
        BenchSettings.from_config(make_config(["bench.plain_mode=threads"], "bench"))
    assert BenchSettings.from_config(make_config()) == BenchSettings()


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


def test_plain_average_weights_by_examples_and_keeps_dtypes():
    like = {"w": np.zeros(2, np.float32), "n": np.zeros((), np.int64)}
    replies = [
        {"examples": 1, "weighted": {"w": np.array([1.0, 1.0]), "n": np.array(4.0)}},
        {"examples": 3, "weighted": {"w": np.array([9.0, 3.0]), "n": np.array(12.0)}},
    ]
    mean = average(replies, like)
    assert mean["w"].dtype == np.float32 and mean["n"].dtype == np.int64
    assert mean["w"].tolist() == [2.5, 1.0] and int(mean["n"]) == 4


def test_plain_loop_repeats_the_client_apps_work(tmp_path):
    """One round through the ClientApp (in process) and through the plain loop agree."""
    from harness import plan_local, run_local

    from fedper import client
    from fedper.bench import run_plain

    plan = plan_local(tmp_path, ["dataset=synthetic", "dataset.size=240", "num_clients=2",
                                 "clients_per_round=2", "num_rounds=1", "batch_size=16"])  # fmt: skip
    (federated,) = run_local(plan).rounds
    client._WORKERS.clear()
    plain = run_plain(plan.spec.to_json(), {"rounds": [federated]}, workers=2, parallel=False)
    (entry,) = plain["rounds"]
    assert entry["accuracy"] == pytest.approx(federated["accuracy"])
    assert entry["loss"] == pytest.approx(federated["loss"], rel=1e-5)
    assert entry["train_compute"] > 0 and entry["evaluate_compute"] > 0
    assert plain["workers"] == 2
