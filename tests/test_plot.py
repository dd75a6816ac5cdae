"""fedper.plot on hand-written results.json files with known accuracies."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from fedper.plot import accuracy_curves, load_runs, plot_runs, summarize

ROOT = Path(__file__).resolve().parents[1]

# accuracy per round (4 rounds) of each algorithm and seed
ACCURACIES = {
    "fedper": {1: [0.20, 0.50, 0.70, 0.60], 2: [0.30, 0.60, 0.80, 0.90], 3: [0.10, 0.40, 0.90, 0.70]},
    "fedavg": {1: [0.10, 0.20, 0.30, 0.40], 2: [0.20, 0.20, 0.20, 0.20], 3: [0.30, 0.10, 0.50, 0.30]},
}  # fmt: skip


def config(algorithm: str, seed: int, **changes) -> dict:
    """A resolved config like fedper.main records; paths and devices differ between seeds."""
    cfg = {
        "algorithm": algorithm,
        "model_name": "mobile",
        "seed": seed,
        "num_rounds": 4,
        "num_clients": 4,
        "learning_rate": 0.01,
        "data_dir": f"/data/{seed}",
        "state_dir": f"/states/{seed}",
        "server_device": "cuda:0" if seed == 1 else "cpu",
        "client_resources": {"num_cpus": seed, "num_gpus": 0},
        "model": {"num_head_layers": 2, "width_multiplier": 0.25},
        "dataset": {"name": "digits", "num_classes": 4, "seed": seed, "mean": [0.5, 0.5, 0.5]},
    }
    cfg.update(changes)
    return cfg


def write_run(run_dir: Path, cfg: dict, accuracies: list[float | None]) -> Path:
    rounds = [
        {"round": i, "accuracy": acc, "loss": 1.0, "per_client": {}}
        for i, acc in enumerate(accuracies, start=1)
    ]
    run_dir.mkdir(parents=True)
    results = {"run_id": run_dir.name, "config": cfg, "partition": [], "rounds": rounds}
    (run_dir / "results.json").write_text(json.dumps(results))
    return run_dir


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    """2 settings x 3 seeds, laid out as a Hydra multirun (one folder per job)."""
    root = tmp_path / "multirun" / "2025-01-01" / "12-00-00"
    job = 0
    for algorithm, per_seed in ACCURACIES.items():
        for seed, accuracies in per_seed.items():
            write_run(root / str(job), config(algorithm, seed), accuracies)
            job += 1
    return tmp_path / "multirun"


def test_summary_has_final_and_best_mean_and_std_over_seeds(sweep: Path, tmp_path: Path) -> None:
    pngs, summary = plot_runs([sweep], tmp_path / "out")
    assert len(summary) == 2  # seeds, paths and devices do not split a setting
    assert list(summary["algorithm"]) == ["fedper", "fedavg"]  # the paper's order
    for algorithm, per_seed in ACCURACIES.items():
        row = summary.set_index("algorithm").loc[algorithm]
        finals = [acc[-1] for acc in per_seed.values()]
        bests = [max(acc) for acc in per_seed.values()]
        assert row["final_mean"] == pytest.approx(statistics.mean(finals))
        assert row["final_std"] == pytest.approx(statistics.stdev(finals))
        assert row["best_mean"] == pytest.approx(statistics.mean(bests))
        assert row["best_std"] == pytest.approx(statistics.stdev(bests))
        assert row["num_seeds"] == 3
        assert row["seeds"] == "1 2 3"
        assert row["rounds_done"] == 4
    fedper = summary.set_index("algorithm").loc["fedper"]
    assert fedper["final_mean"] == pytest.approx((0.6 + 0.9 + 0.7) / 3)
    assert fedper["best_mean"] == pytest.approx((0.7 + 0.9 + 0.9) / 3)
    # the files hold the same table
    on_disk = pd.read_csv(tmp_path / "out" / "summary.csv")
    assert on_disk["final_mean"].tolist() == pytest.approx(summary["final_mean"].tolist())
    markdown = (tmp_path / "out" / "summary.md").read_text()
    assert "| digits | MobileNet-v1 | FedPer | 4 | 2 | 4 | 3 |" in markdown
    assert (
        f"{statistics.mean([0.6, 0.9, 0.7]):.3f} ± {statistics.stdev([0.6, 0.9, 0.7]):.3f}"
        in markdown
    )


def test_curves_are_the_per_round_mean_over_seeds(sweep: Path) -> None:
    curves = accuracy_curves(load_runs([sweep]))
    for algorithm, per_seed in ACCURACIES.items():
        curve = curves[curves["algorithm"] == algorithm].sort_values("round")
        assert curve["round"].tolist() == [1, 2, 3, 4]
        by_round = list(zip(*per_seed.values(), strict=True))
        assert curve["mean"].tolist() == pytest.approx([statistics.mean(r) for r in by_round])
        assert curve["std"].tolist() == pytest.approx([statistics.stdev(r) for r in by_round])
        assert curve["min"].tolist() == pytest.approx([min(r) for r in by_round])
        assert curve["max"].tolist() == pytest.approx([max(r) for r in by_round])
        assert curve["num_seeds"].tolist() == [3, 3, 3, 3]


def test_pngs_are_named_after_the_figure_and_not_empty(sweep: Path, tmp_path: Path) -> None:
    pngs, _ = plot_runs([sweep], tmp_path / "default", band="std")
    assert [p.name for p in pngs] == ["accuracy_digits_mobile.png"]
    pngs, _ = plot_runs([sweep], tmp_path / "named", figure="figure2")
    assert [p.name for p in pngs] == ["figure2_mobile.png"]
    assert (tmp_path / "named" / "figure2_summary.csv").is_file()
    assert (tmp_path / "named" / "figure2_summary.md").is_file()
    for png in pngs:
        assert png.stat().st_size > 1000
        assert png.read_bytes().startswith(b"\x89PNG")


def test_settings_differ_in_any_key_but_seeds_and_paths(tmp_path: Path) -> None:
    for seed in (1, 2):
        write_run(tmp_path / f"lr01_{seed}", config("fedper", seed), [0.5, 0.6, 0.7, 0.8])
        write_run(tmp_path / f"lr1_{seed}", config("fedper", seed, learning_rate=0.1), [0.1] * 4)
        # classes per client become panels and ResNet its own PNG
        cfg = config("fedavg", seed, model_name="resnet")
        cfg["dataset"] = {**cfg["dataset"], "num_classes": 8}
        write_run(tmp_path / f"resnet_{seed}", cfg, [0.3] * 4)
    pngs, summary = plot_runs([tmp_path], tmp_path / "out", figure="sweep")
    assert len(summary) == 3
    assert "learning_rate" in summary.columns  # the key that differs is shown
    assert "state_dir" not in summary.columns and "server_device" not in summary.columns
    assert sorted(summary["learning_rate"]) == [0.01, 0.01, 0.1]
    assert (summary["num_seeds"] == 2).all()
    assert sorted(p.name for p in pngs) == ["sweep_mobile.png", "sweep_resnet.png"]


def test_an_unfinished_run_counts_its_last_round(tmp_path: Path) -> None:
    write_run(tmp_path / "done", config("fedper", 1), [0.1, 0.2, 0.3, 0.4])
    write_run(tmp_path / "cut", config("fedper", 2), [0.3, None])  # a round nobody answered
    write_run(tmp_path / "started", config("fedper", 3), [])  # no round yet: left out
    summary = summarize(load_runs([tmp_path]))
    row = summary.iloc[0]
    assert row["num_seeds"] == 2
    assert row["rounds_done"] == 2
    assert pd.isna(row["final_std"])  # round 2 of seed 2 recorded no accuracy
    assert row["best_mean"] == pytest.approx((0.4 + 0.3) / 2)


def run_plot(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "fedper.plot", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env=os.environ.copy(),
    )


def test_command_line_writes_figures_and_summary(sweep: Path, tmp_path: Path) -> None:
    result = run_plot(str(sweep), "--out", str(tmp_path / "cli"), "--figure", "figure2")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "cli" / "figure2_mobile.png").stat().st_size > 0
    assert "FedPer" in result.stdout and "figure2_summary" in result.stdout


@pytest.mark.parametrize("where", ["empty", "missing"])
def test_no_results_is_a_one_line_error(tmp_path: Path, where: str) -> None:
    folder = tmp_path / where
    if where == "empty":
        (folder / "sub").mkdir(parents=True)
    result = run_plot(str(folder))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fedper.plot: error:")
    assert str(folder) in lines[0]


def test_hardware_switches_do_not_split_a_setting():
    """Devices, resources and performance switches are how a run ran, not what it measured."""
    from fedper.plot import setting_of

    with_switches = {"algorithm": "fedper", "seed": 42, "performance": {"autocast": "auto"},
                     "client_resources": {"num_cpus": 1}, "server_device": "auto"}  # fmt: skip
    without = {"algorithm": "fedper", "seed": 43}
    assert setting_of(with_switches) == setting_of(without) == {"algorithm": "fedper"}
