"""The figure sweeper with a stand-in launcher: every run is tried, failures are named, a dry
run launches nothing, a bad filter stops before anything runs."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra.core.utils import JobReturn, JobStatus
from omegaconf import OmegaConf

from hydra_plugins.fedper_sweeper import figure_sweeper


class RecordingLauncher:
    """Runs nothing: records each batch and fails the jobs that contain `fail`."""

    def __init__(self, fail: str | None = None) -> None:
        self.batches: list[list[list[str]]] = []
        self.fail = fail

    def launch(self, batch, initial_job_idx: int) -> list[JobReturn]:
        self.batches.append([list(job) for job in batch])
        results = []
        for job in batch:
            failed = self.fail is not None and self.fail in job
            result = JobReturn(overrides=list(job))
            result.status = JobStatus.FAILED if failed else JobStatus.COMPLETED
            result._return_value = RuntimeError("out of memory") if failed else 0.5
            results.append(result)
        return results


def make_sweeper(tmp_path: Path, launcher: dict, fail: str | None = None, **options):
    # looked up now: Hydra re-imports plugin modules (and its own basic sweeper) when a test
    # composes a config, and a class from before would not subclass the new base
    sweeper = figure_sweeper.FigureSweeper(
        params={"num_rounds": "2", "algorithm": "fedper,fedavg"}, **options
    )
    sweeper.config = OmegaConf.create(
        {
            "seed": 42,
            "client_resources": {"num_cpus": 1},
            "hydra": {"sweep": {"dir": str(tmp_path / "runs")}, "launcher": launcher},
        }
    )
    sweeper.launcher = RecordingLauncher(fail)
    # the folder a job's overrides name, without composing a config
    sweeper._plan = lambda job: (",".join(sorted(job)), "to run", None)
    return sweeper


@pytest.fixture(autouse=True)
def no_data(monkeypatch: pytest.MonkeyPatch) -> list:
    """Records the configs whose datasets the sweeper prepares, and prepares none."""
    prepared = []
    monkeypatch.setattr(
        figure_sweeper, "prepare_datasets", lambda configs: prepared.extend(configs)
    )
    return prepared


def test_every_run_is_tried_and_failures_are_named(tmp_path: Path, capsys, no_data) -> None:
    sweeper = make_sweeper(tmp_path, {}, fail="algorithm=fedper", seeds=2, max_batch_size=3)
    with pytest.raises(SystemExit) as stop:
        sweeper.sweep(["+figure=fig2"])
    assert stop.value.code == 1
    batches = sweeper.launcher.batches
    assert [len(batch) for batch in batches] == [3, 1]  # max_batch_size jobs at a time
    assert sum(len(batch) for batch in batches) == 4  # the failures did not stop the others
    assert "fedper: 2 of 4 runs failed" in capsys.readouterr().err
    assert len(no_data) == 4  # datasets were prepared before launching, here
    assert (tmp_path / "runs" / "multirun.yaml").is_file()


def test_parallel_jobs_get_their_share_of_cores(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr("os.cpu_count", lambda: 8)
    sweeper = make_sweeper(tmp_path, {"n_jobs": 4})
    [results] = sweeper.sweep([])
    assert [result.status for result in results] == [JobStatus.COMPLETED] * 2
    assert all(job[-1] == "++engine.num_cpus=2" for job in sweeper.launcher.batches[0])


def test_a_dry_run_lists_the_runs_and_launches_nothing(tmp_path: Path, capsys) -> None:
    sweeper = make_sweeper(tmp_path, {}, dry_run=True, seeds=3)
    assert sweeper.sweep([]) == []
    assert sweeper.launcher.batches == []
    listed = capsys.readouterr().out
    assert listed.startswith(f"6 runs in {tmp_path / 'runs'}:")
    assert "  to run                     algorithm=fedavg,num_rounds=2,seed=44" in listed
    assert not (tmp_path / "runs").exists()


def test_a_misspelt_filter_stops_the_sweep_before_anything_runs(tmp_path: Path, capsys) -> None:
    sweeper = make_sweeper(tmp_path, {}, only={"algorithm": ["fedpr"]})
    with pytest.raises(SystemExit) as stop:
        sweeper.sweep([])
    assert stop.value.code == 2
    assert (
        "fedper: error: hydra.sweeper.only: algorithm=fedpr is unknown" in capsys.readouterr().err
    )
    assert sweeper.launcher.batches == []
