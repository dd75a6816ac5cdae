"""`python -m fedper.main` end to end through Ray on the offline digits dataset."""

import json
import re

import pandas as pd
import pytest
import torch
from helpers import TINY, read_results, run_main

pytestmark = pytest.mark.slow
BASE = ["dataset=digits", *TINY]


@pytest.fixture(scope="module")
def fedper_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("fedper")
    run_dir = workdir / "run"
    result = run_main(workdir, [*BASE, "num_rounds=2"], run_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    return workdir, run_dir, result


def test_results_json_has_config_partition_and_every_round(fedper_run):
    workdir, run_dir, _ = fedper_run
    results = read_results(run_dir)
    assert results["config"]["algorithm"] == "fedper"
    assert results["config"]["dataset"]["name"] == "digits"
    assert len(results["partition"]) == 4
    for client in results["partition"]:
        assert len(client["classes"]) == 4 and client["num_train"] > client["num_test"] > 0
    assert [r["round"] for r in results["rounds"]] == [1, 2]
    for entry in results["rounds"]:
        per_client = entry["per_client"]
        assert sorted(per_client) == ["0", "1", "2", "3"]
        accuracies = [c["accuracy"] for c in per_client.values()]
        assert all(0 <= a <= 1 for a in accuracies)
        assert entry["accuracy"] == pytest.approx(sum(accuracies) / 4)
        assert entry["accuracy_min"] == pytest.approx(min(accuracies))
        counts = [c["num_examples"] for c in per_client.values()]
        assert counts == [c["num_test"] for c in results["partition"]]
        assert entry["accuracy_weighted"] == pytest.approx(
            sum(a * n for a, n in zip(accuracies, counts, strict=True)) / sum(counts)
        )
        assert entry["train_loss"] > 0 and entry["seconds"] > 0
        assert entry["bytes_up"] > 0 and entry["bytes_down"] > entry["bytes_up"]
        assert entry["failures"] == [] and entry["clients_ok"] == 4


def test_csv_png_and_console_line_per_round(fedper_run):
    _, run_dir, result = fedper_run
    table = pd.read_csv(run_dir / "results.csv")
    assert list(table["round"]) == [1, 2]
    assert table["accuracy"].tolist() == pytest.approx(
        [r["accuracy"] for r in read_results(run_dir)["rounds"]]
    )
    assert (run_dir / "results.png").stat().st_size > 1000
    output = result.stdout + result.stderr
    assert "round 1/2  accuracy" in output and "round 2/2  accuracy" in output
    assert re.search(r"round 2/2  accuracy .* elapsed \d+:\d\d, ETA 0:00", output)
    assert "━" not in output  # no live bar where the output is not a terminal
    assert "INFO" not in output  # Flower's progress logs stay out of the console
    last = [line for line in output.splitlines() if line.strip()][-1]
    assert last.startswith(f"finished 2 round(s) -> {run_dir}: final accuracy 0.")
    assert last.endswith("; partial rounds (fewer clients than asked): 0")


def test_fedper_uploads_only_the_base_and_heads_stay_on_disk(fedper_run):
    workdir, run_dir, _ = fedper_run
    results = read_results(run_dir)
    checkpoint = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    assert checkpoint["arrays"] and all(k.startswith("base.") for k in checkpoint["arrays"])
    base_bytes = sum(v.numel() * v.element_size() for v in checkpoint["arrays"].values())
    # four clients upload the base; serialization adds a small header per array
    headers = 4 * 256 * len(checkpoint["arrays"])
    assert 4 * base_bytes <= results["rounds"][0]["bytes_up"] < 4 * base_bytes + headers
    states = workdir / "client_states" / results["run_id"]
    heads = {}
    for cid in range(4):
        saved = torch.load(states / f"client_{cid}.pt", weights_only=True)["versions"]
        assert sorted(saved) == [1, 2]
        heads[cid] = saved[2]
        assert all(k.startswith("head.") for k in saved[2])
    weight = next(k for k in heads[0] if k.endswith("weight"))
    assert not torch.equal(heads[0][weight], heads[1][weight]), "heads were shared"


def test_same_seed_same_partition_and_round_1_metrics(fedper_run, tmp_path):
    _, first_dir, _ = fedper_run
    again = tmp_path / "again"
    result = run_main(tmp_path, [*BASE, "num_rounds=1"], again)
    assert result.returncode == 0, result.stderr[-3000:]
    first, second = read_results(first_dir), read_results(again)
    assert first["partition"] == second["partition"]
    assert first["rounds"][0]["per_client"] == second["rounds"][0]["per_client"]
    assert first["run_id"] != second["run_id"]


def test_fedavg_averages_the_whole_model(tmp_path):
    run_dir = tmp_path / "run"
    result = run_main(tmp_path, [*BASE, "num_rounds=1", "algorithm=fedavg"], run_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    checkpoint = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    keys = set(checkpoint["arrays"])
    assert any(k.startswith("head.") for k in keys) and any(k.startswith("base.") for k in keys)
    results = read_results(run_dir)
    assert not (tmp_path / "client_states" / results["run_id"] / "client_0.pt").exists()


def test_multirun_jobs_keep_separate_state(tmp_path):
    result = run_main(
        tmp_path,
        [
            "--multirun",
            *BASE,
            "num_rounds=1",
            "algorithm=fedper,local",
            f"hydra.sweep.dir={tmp_path}/sweep",
        ],
    )
    assert result.returncode == 0, result.stderr[-3000:]
    output = result.stdout + result.stderr
    assert "== job 1 of 2: " in output and "== job 2 of 2: " in output  # with elapsed and ETA
    assert re.search(r"== job 2 of 2: .*\(sweep elapsed \d+:\d\d, ETA \d+:\d\d\) ==", output)
    runs = sorted((tmp_path / "sweep").glob("*/results.json"))
    assert len(runs) == 2
    found = [json.loads(p.read_text()) for p in runs]
    assert {r["config"]["algorithm"] for r in found} == {"fedper", "local"}
    run_ids = {r["run_id"] for r in found}
    assert len(run_ids) == 2
    assert {p.name for p in (tmp_path / "client_states").iterdir()} == run_ids
