"""A bad command line is refused in one line, with the nearest name, before torch is imported
and before Hydra writes a folder; `--help` lists the settings, groups and presets."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import ROOT

from fedper.algorithms import ALGORITHMS
from fedper.config_keys import every_key
from fedper.errors import ConfigError
from fedper.main import check_settings, check_start
from fedper.models import MODELS
from fedper.preflight import check_overrides
from fedper.usage import PROGRAMS, groups

CHECKS = (check_settings, check_start)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["num_round=5"], "num_round is not a fedper setting: did you mean num_rounds=5?"),
        (["+num_round=5"], "num_round is not a fedper setting: did you mean num_rounds=5?"),
        (["model=resnet"], "model is a section, not a setting: did you mean model_name=resnet?"),
        (["lr=0.1"], "lr is not a fedper setting: did you mean learning_rate=0.1?"),
        (["dataset.clases=3"], "dataset.clases is not a fedper setting: did you mean dataset.num_classes=3?"),
        (["dataset=cifar"], "dataset=cifar is unknown: use one of cifar10, cifar100, digits, flickr, synthetic (did you mean dataset=cifar10?)"),
        (["engine=simulaton"], "(did you mean engine=simulation?)"),
        (["algorithm=fedpr"], "(did you mean algorithm=fedper?)"),
        (["logger=[csv,tensorbord]"], "logger=tensorbord is unknown: use one of csv, mlflow, none, tensorboard, wandb (did you mean logger=tensorboard?)"),
        (["+figure=fig2_quick"], "+figure=fig2_quick is a sweep of many runs: add --multirun (python -m fedper.main --multirun +figure=fig2_quick)"),
        (["num_rounds=0"], "num_rounds=0 is out of range: use a whole number >= 1"),
    ],
)  # fmt: skip
def test_a_bad_override_is_refused_with_the_nearest_name(overrides, message):
    with pytest.raises(ConfigError) as error:
        check_overrides(overrides, "base", multirun=False, checks=CHECKS)
    assert message in str(error.value)
    assert "\n" not in str(error.value)


def test_every_value_of_a_sweep_is_checked():
    sweep = ["dataset=digits", "algorithm=fedper,fedavg,fedavgg", "num_rounds=1,2"]
    with pytest.raises(ConfigError, match="algorithm=fedavgg is unknown"):
        check_overrides(sweep, "base", multirun=True, checks=CHECKS)
    check_overrides(sweep[:1] + ["algorithm=fedper,fedavg", "num_rounds=1,2"], "base", True, CHECKS)  # fmt: skip


def test_a_good_command_line_and_a_figure_sweep_pass():
    check_overrides(["dataset=digits", "num_rounds=3"], "base", False, CHECKS)
    check_overrides(["+figure=fig2_quick"], "base", True, CHECKS)
    check_overrides(["dataset.num_classes=8"], "cifar10", False, CHECKS)
    check_overrides(["dataset=digits", "logger=[csv,tensorboard]"], "base", False, CHECKS)
    # launchers that Hydra's plugins bring, beside conf/hydra/launcher/slurm.yaml
    for launcher in ("joblib", "submitit_local", "basic"):
        check_overrides(["+figure=fig2_quick", f"hydra/launcher={launcher}"], "base", True, CHECKS)


def run_without_torch(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """`python -m <args>` where importing torch fails: what it prints must not need torch."""
    blocker = cwd / "no_torch"
    (blocker / "torch").mkdir(parents=True, exist_ok=True)
    (blocker / "torch" / "__init__.py").write_text("raise ImportError('torch was imported')\n")
    path = os.pathsep.join([str(blocker), str(ROOT)])
    run_in = cwd / "work"
    run_in.mkdir(exist_ok=True)
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=run_in, capture_output=True, text=True,
        timeout=120, env={**os.environ, "PYTHONPATH": path},
    )  # fmt: skip


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (["fedper.main", "num_round=5"], "fedper: error: num_round is not a fedper setting: did you mean num_rounds=5?"),
        (["fedper.main", "model=resnet"], "fedper: error: model is a section, not a setting: did you mean model_name=resnet?"),
        (["fedper.main", "learning_rate=-1"], "fedper: error: learning_rate=-1 is out of range: use a number > 0"),
        (["fedper.main", "+figure=fig2_quick"], "fedper: error: +figure=fig2_quick is a sweep of many runs"),
        (["fedper.main", "--multirun", "num_rounds=2,0"], "fedper: error: num_rounds=0 is out of range"),
        (["fedper.bench", "bench=gpuu"], "fedper.bench: error: bench=gpuu is unknown: use one of default, deployment, gpu, scale (did you mean bench=gpu?)"),
    ],
)  # fmt: skip
def test_refusals_need_no_torch_and_leave_no_folder(tmp_path, args, line):
    result = run_without_torch(args, tmp_path)
    assert result.returncode == 2, result.stderr[-2000:]
    lines = [x for x in result.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith(line), result.stderr[-2000:]
    assert list((tmp_path / "work").iterdir()) == []  # no outputs/ or multirun/ folder


@pytest.mark.parametrize("program", ["fedper.main", "fedper.bench", "fedper.demo"])
def test_help_lists_settings_groups_and_presets_without_torch(tmp_path, program):
    result = run_without_torch([program, "--help", "num_rounds=7"], tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    text = result.stdout
    assert "is powered by Hydra" not in text
    spec = PROGRAMS[program.removeprefix("fedper.")]
    for key in spec.settings:
        assert f"\n  {key} " in text
    assert [line for line in text.splitlines() if line.startswith("  num_rounds ")][0].split()[1] == "7"  # fmt: skip
    for options in groups(spec.hidden).values():
        assert ", ".join(options) in text
    for internal in ("faults", "figure/common", "figure/scale", "hydra/"):
        assert f"\n  {internal}" not in text
    assert list((tmp_path / "work").iterdir()) == []


def test_help_names_every_registered_algorithm_and_model_and_only_known_keys():
    text = PROGRAMS["main"].settings
    assert all(name in text["algorithm"] for name in ALGORITHMS)
    assert all(name in text["model_name"] for name in MODELS)
    for spec in PROGRAMS.values():
        assert set(spec.settings) <= every_key() | {"bench.plain_mode", "bench.prep_repeats", "bench.memory_interval"}  # fmt: skip
