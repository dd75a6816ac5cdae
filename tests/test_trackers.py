"""logger=csv|tensorboard|mlflow|wandb: every committed round reaches each tracker, read back
from its own files or server; a resume continues the same tracked run; rounds without an
evaluation log no evaluation metrics; a missing tracker is one line naming its extra."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
from helpers import SMALL, make_config, run_local
from helpers.trackers import tensorboard_scalars, wandb_history

from fedper.errors import ConfigError
from fedper.experiment import run_experiment
from fedper.trackers import RunTrackers, check_trackers, round_metrics

MlflowClient = pytest.importorskip("mlflow.tracking").MlflowClient  # the dev extra brings it
ALL = "logger=[csv,tensorboard,mlflow,wandb]"


def engine(plan):
    run_local(plan)


def start(root: Path, overrides: list[str], run_dir: Path) -> dict:
    given = [*SMALL, f"data_dir={root / 'datasets'}", f"state_dir={root / 'states'}", *overrides]
    return run_experiment(make_config(given), run_dir, given, engine=engine)


def resume(run_dir: Path, overrides: list[str]) -> dict:
    given = [f"resume={run_dir}", *overrides]
    return run_experiment(make_config(given), "unused", given, engine=engine)


@pytest.fixture(scope="module")
def tracked(tmp_path_factory):
    """A 2-round run with every tracker, then resumed to 3 rounds after "losing" the note that
    round 2 was logged (as a kill between the commit and the trackers would)."""
    root = tmp_path_factory.mktemp("tracked")
    store = f"sqlite:///{root / 'mlflow.db'}"  # MLflow's local store (its file store is retired)
    overrides = [ALL, f"logger.mlflow.tracking_uri={store}", "logger.wandb.mode=offline"]
    run_dir = root / "run"
    start(root, overrides, run_dir)
    state_path = run_dir / "trackers" / "state.json"
    state = json.loads(state_path.read_text())
    first_mlflow_run = state["mlflow"]["run_id"]
    state_path.write_text(json.dumps({**state, "logged_round": 1}))
    results = resume(run_dir, ["num_rounds=3"])
    return SimpleNamespace(
        root=root, run_dir=run_dir, store=store, results=results, first_run=first_mlflow_run
    )


def accuracies(results: dict) -> list[float]:
    return [r["accuracy"] for r in results["rounds"]]


def test_csv_has_one_row_per_round_with_each_client(tracked):
    table = pd.read_csv(tracked.run_dir / "trackers" / "csv" / "metrics.csv")
    assert table["round"].tolist() == [1, 2, 3]
    assert table["test/accuracy"].tolist() == pytest.approx(accuracies(tracked.results))
    assert {f"clients/accuracy_{cid}" for cid in range(3)} <= set(table.columns)
    hparams = (tracked.run_dir / "trackers" / "csv" / "hparams.yaml").read_text()
    assert "num_clients: 3" in hparams and f"run_dir: {tracked.run_dir}" in hparams


def test_tensorboard_events_hold_scalars_histograms_and_hyperparameters(tracked):
    events = tensorboard_scalars(tracked.run_dir / "trackers" / "tensorboard")
    scalars = events.Scalars("test/accuracy")
    assert [e.step for e in scalars] == [1, 2, 3]  # round 2 logged twice is kept once
    assert [e.value for e in scalars] == pytest.approx(accuracies(tracked.results), abs=1e-6)
    assert [e.step for e in events.Scalars("val/accuracy")] == [1, 2, 3]
    assert [e.step for e in events.Scalars("round/seconds")] == [1, 2, 3]
    histograms = events.Histograms("clients/accuracy")
    assert [h.step for h in histograms] == [1, 2, 3]
    assert all(h.histogram_value.num == 3 for h in histograms)  # one value per client
    assert "_hparams_/experiment" in events.PluginTagToContent("hparams")


def test_mlflow_run_is_continued_with_params_and_every_round(tracked):
    client = MlflowClient(tracking_uri=tracked.store)
    runs = client.search_runs([client.get_experiment_by_name("fedper").experiment_id])
    assert [r.info.run_id for r in runs] == [tracked.first_run]  # the resume added no run
    run = runs[0]
    assert run.info.run_name == str(tracked.run_dir) and run.info.status == "FINISHED"
    assert run.data.tags["run_dir"] == str(tracked.run_dir)
    assert run.data.params["num_clients"] == "3" and run.data.params["algorithm"] == "fedper"
    history = client.get_metric_history(run.info.run_id, "test/accuracy")
    by_step = {m.step: m.value for m in history}
    assert sorted(by_step) == [1, 2, 3]
    assert [by_step[s] for s in (1, 2, 3)] == pytest.approx(accuracies(tracked.results))
    assert len(client.get_metric_history(run.info.run_id, "clients/accuracy_2")) >= 3


def test_wandb_offline_run_is_one_run_with_every_round(tracked):
    run_ids, steps = wandb_history(tracked.run_dir / "trackers" / "wandb")
    assert len(run_ids) == 2 and len(set(run_ids)) == 1  # the resume continued the same run
    assert run_ids[0] == tracked.results["run_id"]
    assert sorted(steps) == [1, 2, 3]
    for entry in tracked.results["rounds"]:
        logged = steps[entry["round"]]
        assert logged["test/accuracy"] == pytest.approx(entry["accuracy"])
        assert logged["clients/accuracy/_type"] == "histogram"
        assert sum(logged["clients/accuracy/values"]) == 3


def fake_spec(tmp_path: Path, overrides: list[str]) -> SimpleNamespace:
    return SimpleNamespace(cfg=make_config(overrides), run_dir=str(tmp_path), run_id="run-1")


def test_a_round_without_evaluation_logs_no_evaluation_metric(tmp_path):
    evaluated = {"round": 1, "accuracy": 0.5, "val_accuracy": 0.4, "train_loss": 1.2,
                 "seconds": 3.0, "per_client": {"0": {"accuracy": 0.5}, "1": {"accuracy": 0.5}}}  # fmt: skip
    sampled_out = {"round": 2, "evaluated": False, "accuracy": None, "val_accuracy": None,
                   "train_loss": 0.9, "seconds": 2.0, "per_client": {}}  # fmt: skip
    metrics, clients = round_metrics(sampled_out)
    assert metrics == {"train/loss": 0.9, "round/seconds": 2.0} and clients == {}
    trackers = RunTrackers.open(fake_spec(tmp_path, ["logger=[csv,tensorboard]"]), [])
    trackers.log_round(evaluated)
    trackers.log_round(sampled_out)
    trackers.close()
    events = tensorboard_scalars(tmp_path / "trackers" / "tensorboard")
    assert [e.step for e in events.Scalars("test/accuracy")] == [1]
    assert [e.step for e in events.Scalars("train/loss")] == [1, 2]
    assert [h.step for h in events.Histograms("clients/accuracy")] == [1]
    table = pd.read_csv(tmp_path / "trackers" / "csv" / "metrics.csv")
    assert table["train/loss"].tolist() == [1.2, 0.9] and table["test/accuracy"].isna().tolist() == [False, True]  # fmt: skip


def test_a_missing_tracker_package_is_one_line_naming_the_extra(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a)
    )
    with pytest.raises(ConfigError) as error:
        check_trackers(make_config(["logger=[csv,wandb]"]))
    assert str(error.value) == "logger=wandb needs the wandb package: pip install 'fedper[wandb]'"
    check_trackers(make_config(["logger=[csv,tensorboard,mlflow]"]))


def test_the_client_path_imports_no_tracker():
    code = (
        "import sys, fedper.client_app, fedper.client\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('mlflow', 'wandb', 'tensorboard')"
        " or m.startswith('fedper.trackers.') or m == 'torch.utils.tensorboard']\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=300)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def mlflow_server(tmp_path):
    """A real MLflow tracking server on loopback, stopped (its process group) at the end."""
    port = free_port()
    command = [
        sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
        "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
        "--default-artifact-root", str(tmp_path / "artifacts"), "--workers", "1",
    ]  # fmt: skip
    log = (tmp_path / "server.log").open("w")
    server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    try:
        while True:  # until it answers its health check (or exits, or the deadline passes)
            assert server.poll() is None, (tmp_path / "server.log").read_text()[-2000:]
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=5) as reply:
                    if reply.status == 200:
                        break
            except OSError:
                assert time.monotonic() < deadline, "the MLflow server did not start"
                time.sleep(0.5)
        yield url
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=60)
        log.close()


@pytest.mark.slow
def test_mlflow_tracking_server_receives_every_round(tmp_path, mlflow_server):
    overrides = ["logger=mlflow", f"logger.mlflow.tracking_uri={mlflow_server}",
                 "logger.mlflow.experiment_name=served"]  # fmt: skip
    results = start(tmp_path, overrides, tmp_path / "run")
    client = MlflowClient(tracking_uri=mlflow_server)
    runs = client.search_runs([client.get_experiment_by_name("served").experiment_id])
    assert len(runs) == 1 and runs[0].info.run_name == str(tmp_path / "run")
    history = client.get_metric_history(runs[0].info.run_id, "test/accuracy")
    by_step = dict(sorted((m.step, m.value) for m in history))
    assert list(by_step) == [r["round"] for r in results["rounds"]]
    assert list(by_step.values()) == pytest.approx([r["accuracy"] for r in results["rounds"]])
