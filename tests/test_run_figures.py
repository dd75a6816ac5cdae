"""run_figures.sh: a tiny quick sweep that runs, draws and then skips; the full sweep's plan."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "run_figures.sh"


def run_script(
    options: list[str], cwd: Path, overrides: list[str] = (), timeout: float = 600
) -> subprocess.CompletedProcess:
    """`bash run_figures.sh` with this interpreter; `overrides` go after `--` to every run."""
    args = ["bash", str(SCRIPT), "--python", sys.executable, *options]
    if overrides:
        args += ["--", *overrides]
    return subprocess.run(
        args, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=os.environ.copy()
    )


def command_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if " -m fedper.main " in line]


def test_quick_sweep_runs_draws_and_then_skips_finished_runs(tmp_path: Path) -> None:
    # figure 4 cut to two runs (FedPer with 1 head layer, the FedAvg reference) of one round
    out = tmp_path / "figures"
    options = ["--quick", "--figures", "4", "--rounds", "1", "--seeds", "1"]
    options += ["--models", "mobile", "--heads", "1", "--out", str(out)]
    overrides = ["num_clients=4", "clients_per_round=4"]

    first = run_script(options, tmp_path, overrides)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert "== figure 4 (1/2): mobile fedper 1 head layer seed 42 ==" in first.stdout
    assert "== figure 4 (2/2): mobile fedavg (reference) seed 42 ==" in first.stdout
    results = sorted((out / "runs" / "figure4").glob("*/results.json"))
    assert [p.parent.name for p in results] == [
        "mobile_fedavg_c4_h2_r1_s42",
        "mobile_fedper_c4_h1_r1_s42",
    ]
    for path in results:
        run = json.loads(path.read_text())
        assert [r["round"] for r in run["rounds"]] == [1]
        config = run["config"]
        assert config["dataset"]["name"] == "digits" and config["num_clients"] == 4
        assert config["model"]["width_multiplier"] == 0.25 and config["seed"] == 42
        assert Path(config["state_dir"]) == out / "client_states"
    png = out / "figure4_mobile.png"
    assert png.stat().st_size > 1000
    summary = pd.read_csv(out / "figure4_summary.csv")
    assert sorted(summary["algorithm"]) == ["fedavg", "fedper"]
    assert (summary["num_seeds"] == 1).all()
    assert (out / "figure4_summary.md").is_file()

    stamps = {path: path.stat().st_mtime_ns for path in results}
    started = time.monotonic()
    again = run_script(options, tmp_path, overrides)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert again.stdout.count("finished, skipped ==") == 2
    assert "0 run(s) finished, 2 skipped" in again.stdout
    assert command_lines(again.stdout) == []
    assert {path: path.stat().st_mtime_ns for path in results} == stamps
    assert time.monotonic() - started < 30  # only the drawing, no simulation


def test_dry_run_lists_every_figure2_run_and_skips_only_finished_ones(tmp_path: Path) -> None:
    out = tmp_path / "full"
    result = run_script(
        ["--dry-run", "--figures", "2", "--seeds", "2", "--out", str(out)], tmp_path
    )
    assert result.returncode == 0, result.stderr
    commands = command_lines(result.stdout)
    assert len(commands) == 4 * 3 * 2 * 2  # algorithms x classes per client x models x seeds
    assert all("--config-name cifar10" in c and "num_rounds=50" in c for c in commands)
    assert sum("seed=43" in c for c in commands) == 24
    assert sum("model_name=resnet" in c and "dataset.num_classes=10" in c for c in commands) == 8
    assert "-m fedper.plot" in result.stdout
    assert not out.exists()  # a dry run writes nothing

    # one finished run is skipped; a half-done one (1 of 50 rounds) is listed to resume
    finished = out / "runs" / "figure2" / "mobile_fedper_c4_h2_r50_s42"
    half_done = out / "runs" / "figure2" / "mobile_fedavg_c4_h2_r50_s42"
    for run_dir, done in ((finished, 50), (half_done, 1)):
        run_dir.mkdir(parents=True)
        rounds = [{"round": r, "accuracy": 0.5} for r in range(1, done + 1)]
        run = {"config": {"num_rounds": 50}, "rounds": rounds}
        (run_dir / "results.json").write_text(json.dumps(run))
    result = run_script(
        ["--dry-run", "--figures", "2", "--seeds", "2", "--out", str(out)], tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert len(command_lines(result.stdout)) == 47
    assert "mobile fedper 4 classes seed 42: finished, skipped ==" in result.stdout
    assert any(str(half_done) in c for c in command_lines(result.stdout))


def test_quick_mode_skips_flickr_and_help_and_bad_options(tmp_path: Path) -> None:
    result = run_script(["--quick", "--dry-run", "--figures", "7,8"], tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("skipped with --quick") == 2
    assert command_lines(result.stdout) == []

    usage = run_script(["--help"], tmp_path)
    assert usage.returncode == 0 and usage.stdout.startswith("Usage: bash run_figures.sh")

    for bad in (["--figures", "3"], ["--seeds", "0"], ["--models", "vgg"], ["--nope"]):
        result = run_script(["--dry-run", *bad], tmp_path)
        assert result.returncode == 2, bad
        assert result.stderr.startswith("run_figures.sh: error:")


def test_quick_plan_gives_each_model_its_own_scale(tmp_path: Path) -> None:
    out = tmp_path / "quick"
    options = ["--quick", "--dry-run", "--figures", "2", "--classes", "4", "--out", str(out)]
    commands = command_lines(run_script(options, tmp_path).stdout)
    mobile = [c for c in commands if "model_name=mobile" in c]
    resnet = [c for c in commands if "model_name=resnet" in c]
    assert len(mobile) == len(resnet) == 4
    assert all("experiment=digits_demo" in c for c in commands)
    assert all("num_rounds=20" in c and "image_size" not in c for c in mobile)
    assert all("num_rounds=10" in c and "dataset.image_size=48" in c for c in resnet)
    assert all("_r10_s42" in c for c in resnet)  # the rounds name the run folder

    # --rounds replaces both models' quick rounds; the ResNet image size stays
    commands = command_lines(run_script([*options, "--rounds", "3"], tmp_path).stdout)
    assert len(commands) == 8 and all("num_rounds=3" in c for c in commands)
    assert sum("dataset.image_size=48" in c for c in commands) == 4
