"""run_figures.sh: flags become sweep overrides, the dry run lists the runs the old script did,
and a tiny sweep through submitit_local runs, draws and then skips its finished runs."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from functools import cache
from pathlib import Path

import pandas as pd
import pytest
from helpers import make_config
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "run_figures.sh"
DATA = Path(__file__).parent / "data"
# a run's place and the paths it writes to are not its settings
NOT_SETTINGS = ("seed", "state_dir", "hydra.run.dir")

pytestmark = pytest.mark.slow  # every test here starts bash and Python, some start Ray


def run_script(
    options: list[str], cwd: Path, overrides: list[str] = (), timeout: float = 900
) -> subprocess.CompletedProcess:
    """`bash run_figures.sh` with this interpreter; `overrides` go after `--` to every run."""
    args = ["bash", str(SCRIPT), "--python", sys.executable, *options]
    if overrides:
        args += ["--", *overrides]
    return subprocess.run(
        args, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=os.environ.copy()
    )


@cache
def settings(config_name: str, overrides: tuple[str, ...]) -> str:
    """A run's resolved config without its seed and paths, as comparable text."""
    cfg = OmegaConf.to_container(make_config(list(overrides), config_name), resolve=True)
    for key in ("seed", "state_dir"):
        cfg.pop(key)
    return json.dumps(cfg, sort_keys=True)


def old_runs(saved: str, changed: dict[str, tuple[str, ...]]) -> set[tuple[str, str, int]]:
    """(figure, settings, seed) of every run a dry run of the old script listed, finished or not.

    Finished runs were listed without their command, so their overrides come from the same
    setting's command at another seed. `changed` replaces overrides the configs have changed
    on purpose since (each by one or more overrides)."""
    labels, commands = [], {}
    label = None
    for line in saved.splitlines():
        if match := re.match(
            r"== figure (\d+) \(\d+/\d+\): (.+) seed (\d+)(: finished.*)? ==$", line
        ):
            label = (match[1], match[2])
            labels.append((*label, int(match[3])))
        elif line.startswith("python -m fedper.main "):
            commands[label] = shlex.split(line)[3:]
    runs = set()
    for figure, name, seed in labels:
        args = commands[(figure, name)]
        config_name = args[args.index("--config-name") + 1]
        kept = [a for a in args[2:] if a.split("=")[0] not in NOT_SETTINGS]
        overrides = [new for a in kept for new in changed.get(a, (a,))]
        runs.add((figure, settings(config_name, tuple(overrides)), seed))
    return runs


def new_runs(output: str) -> set[tuple[str, str, int]]:
    """(figure, settings, seed) of every run the new dry run lists (folders name the overrides)."""
    runs = set()
    figure = config = None
    for line in output.splitlines():
        if match := re.match(r"== figure (\d+): .* \+figure=(\S+) ", line):
            figure, config = match[1], match[2]
        elif match := re.match(r"  (?:to run|finished|continues after round \d+) +(\S+)$", line):
            overrides = dict(item.split("=", 1) for item in match[1].split(","))
            seed = int(overrides.pop("seed"))
            lines = tuple(f"{k}={v}" for k, v in overrides.items())
            runs.add((figure, settings("base", (f"+figure={config}", *lines)), seed))
    return runs


@pytest.mark.parametrize(
    ("saved", "options", "count", "changed"),
    [
        # the CPU-scale runs now take settings chosen on validation: MobileNet-v1 the demo
        # preset's 30 rounds, ResNet-34 20 rounds at a learning rate of 0.01
        ("run_figures_dry_run_quick_seeds5.txt", ["--quick", "--seeds", "5"], 165,
         {"num_rounds=20": ("num_rounds=30",),
          "num_rounds=10": ("num_rounds=20", "learning_rate=0.01")}),
        ("run_figures_dry_run_full_seeds2.txt", ["--seeds", "2"], 74, {}),
    ],
)  # fmt: skip
def test_dry_run_lists_the_same_runs_as_the_old_script(
    tmp_path: Path, saved: str, options: list[str], count: int, changed: dict[str, tuple]
) -> None:
    before = old_runs((DATA / saved).read_text(), changed)
    result = run_script(["--dry-run", "--out", str(tmp_path / "out"), *options], tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    after = new_runs(result.stdout)
    assert len(before) == count
    assert after == before
    assert not (tmp_path / "out").exists()  # a dry run writes nothing


def test_dry_run_says_which_runs_are_finished_and_which_continue(tmp_path: Path) -> None:
    out = tmp_path / "full"
    options = ["--dry-run", "--figures", "2", "--models", "mobile", "--out", str(out)]
    options += ["--classes", "4", "--algorithms", "fedper,fedavg"]
    runs = out / "runs" / "figure2"
    name = "algorithm={},dataset.num_classes=4,model_name=mobile,num_rounds=50,seed=42"
    for algorithm, done in (("fedper", 50), ("fedavg", 1)):
        (runs / name.format(algorithm)).mkdir(parents=True)
        rounds = [{"round": r, "accuracy": 0.5} for r in range(1, done + 1)]
        (runs / name.format(algorithm) / "results.json").write_text(json.dumps({"rounds": rounds}))
    result = run_script(options, tmp_path)
    assert result.returncode == 0, result.stderr
    assert f"  finished                   {name.format('fedper')}" in result.stdout
    assert f"  continues after round 1    {name.format('fedavg')}" in result.stdout
    assert "-m fedper.plot" in result.stdout and "--compare algorithm=fedper" in result.stdout
    assert "== dry run: nothing was run ==" in result.stdout


def test_flags_become_overrides_of_the_sweep(tmp_path: Path) -> None:
    options = ["--dry-run", "--quick", "--figures", "4", "--models", "mobile", "--heads", "1,3"]
    options += ["--seeds", "2", "--first-seed", "7", "--rounds", "3", "--jobs", "2"]
    result = run_script([*options, "--out", str(tmp_path / "q")], tmp_path)
    assert result.returncode == 0, result.stderr
    assert re.search(r"6 runs in \S+figure4 \(each with \+\+engine\.num_cpus=\d+\):", result.stdout)
    folders = re.findall(r"^  to run +(\S+)$", result.stdout, flags=re.MULTILINE)
    assert sorted(folders) == sorted(
        f"algorithm={algorithm},model_name=mobile,num_rounds=3,seed={seed}"
        if algorithm == "fedavg"
        else f"algorithm=fedper,model.num_head_layers={heads},model_name=mobile,num_rounds=3,seed={seed}"
        for algorithm, heads in (("fedper", 1), ("fedper", 3), ("fedavg", None))
        for seed in (7, 8)
    )
    assert "hydra/launcher=joblib hydra.launcher.n_jobs=2" in result.stdout

    # filters that leave a figure nothing skip it, as --quick skips figures without a variant
    result = run_script(["--dry-run", "--quick", "--algorithms", "local"], tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("skipped with --quick") == 2
    assert "No runs: hydra.sweeper.only" in result.stdout  # figure 4


def test_help_and_bad_options(tmp_path: Path) -> None:
    usage = run_script(["--help"], tmp_path)
    assert usage.returncode == 0 and usage.stdout.startswith("Usage: bash run_figures.sh")
    for bad in (["--figures", "3"], ["--seeds", "0"], ["--jobs", "two"], ["--models", "a b"]):
        result = run_script(["--dry-run", *bad], tmp_path)
        assert result.returncode == 2, bad
        assert result.stderr.startswith("run_figures.sh: error:"), bad
    for bad in (["--nope"], ["--rounds"]):
        assert run_script(bad, tmp_path).returncode == 2
    # names are checked against the registries, once, before anything runs
    result = run_script(["--dry-run", "--figures", "2,4", "--models", "vgg"], tmp_path)
    assert result.returncode == 2
    assert "fedper: error: hydra.sweeper.only: model_name=vgg is unknown" in result.stderr
    assert "figure 4" not in result.stdout


def test_tiny_sweep_through_submitit_runs_draws_and_then_skips_finished_runs(
    tmp_path: Path,
) -> None:
    # figure 2 cut to 2 runs of 1 round with 2 clients (MobileNet at width 0.25 on digits),
    # one job at a time (max_batch_size=1) so that only one Ray runs at once
    out = tmp_path / "figures"
    options = ["--quick", "--figures", "2", "--models", "mobile", "--classes", "4"]
    options += ["--algorithms", "fedper,fedavg", "--rounds", "1", "--out", str(out)]
    overrides = ["num_clients=2", "clients_per_round=2", "hydra/launcher=submitit_local"]
    overrides += ["hydra.sweeper.max_batch_size=1"]

    first = run_script(options, tmp_path, overrides)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    results = sorted((out / "runs" / "figure2").glob("*/results.json"))
    name = "algorithm={},clients_per_round=2,dataset.num_classes=4,model_name=mobile,num_clients=2,num_rounds=1,seed=42"
    assert [path.parent.name for path in results] == [
        name.format("fedavg"),
        name.format("fedper"),
    ]
    for path in results:
        run = json.loads(path.read_text())
        assert [r["round"] for r in run["rounds"]] == [1]
        config = run["config"]
        assert config["dataset"]["name"] == "digits" and config["num_clients"] == 2
        assert config["model"]["width_multiplier"] == 0.25 and config["seed"] == 42
        assert Path(config["state_dir"]) == out / "client_states"
    assert (out / "figure2_mobile.png").stat().st_size > 1000
    summary = pd.read_csv(out / "figure2_summary.csv")
    assert sorted(summary["algorithm"]) == ["fedavg", "fedper"]

    stamps = {path: path.stat().st_mtime_ns for path in results}
    again = run_script(options, tmp_path, overrides)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "2 runs in" in again.stdout and "2 finished (they return at once)" in again.stdout
    assert {path: path.stat().st_mtime_ns for path in results} == stamps


def test_a_fresh_clone_reproduces_a_quick_figure_outside_the_tracked_tree(tmp_path: Path) -> None:
    # the README's CPU reproduction, cut to one run of 2 rounds with 2 clients, in a new clone
    # of this checkout's commit, with this environment's Python and the default output folder
    clone = tmp_path / "clone"
    cloned = subprocess.run(["git", "clone", "--quiet", str(ROOT), str(clone)], capture_output=True)
    assert cloned.returncode == 0, cloned.stderr
    options = ["--quick", "--figures", "2", "--models", "mobile", "--classes", "4"]
    options += ["--algorithms", "fedper", "--rounds", "2", "--python", sys.executable]
    overrides = ["num_clients=2", "clients_per_round=2"]
    args = ["bash", str(clone / "run_figures.sh"), *options, "--", *overrides]
    done = subprocess.run(
        args, cwd=clone, capture_output=True, text=True, timeout=900, env=os.environ.copy()
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    out = clone / "outputs" / "figures" / "quick"  # the default: ignored by git
    [result] = (out / "runs" / "figure2").glob("*/results.json")
    run = json.loads(result.read_text())
    assert [r["round"] for r in run["rounds"]] == [1, 2]
    head = subprocess.run(["git", "-C", str(clone), "rev-parse", "HEAD"], capture_output=True)
    # the clone's own code ran (not this checkout's), and left its tracked files as they were
    assert run["code_version"] == {"commit": head.stdout.decode().strip(), "dirty": False}
    assert (out / "figure2_mobile.png").stat().st_size > 1000
    status = subprocess.run(["git", "-C", str(clone), "status", "--porcelain"], capture_output=True)
    assert status.stdout.decode() == ""  # nothing new or changed outside ignored folders
