"""fedper.sweeps: grids, filters, tied settings and seeds as jobs; each parallel job's share."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from fedper import sweeps
from fedper.algorithms import ALGORITHMS
from fedper.models import MODELS
from fedper.sweeps import (
    FigureError,
    JobShare,
    PinParallelJobs,
    check_only,
    claim_slot,
    expand_jobs,
    job_share,
    parallel_jobs,
    resource_overrides,
    run_status,
)

# figure 4's shape: a head sweep per model and a FedAvg reference without a head count
FIG4_GRIDS = [
    {"model_name": "mobile", "algorithm": "fedper", "model.num_head_layers": "1,2,3,4"},
    {"model_name": "resnet", "algorithm": "fedper", "model.num_head_layers": "1,2,3"},
    {"model_name": "mobile,resnet", "algorithm": "fedavg"},
]


def as_dicts(jobs: list[list[str]]) -> list[dict[str, str]]:
    return [dict(line.split("=", 1) for line in job) for job in jobs]


def test_a_union_of_grids_runs_each_setting_once_per_seed() -> None:
    jobs = as_dicts(expand_jobs({"num_rounds": "25"}, FIG4_GRIDS, [], seeds=2, first_seed=42))
    assert len(jobs) == (4 + 3 + 2) * 2
    fedavg = [job for job in jobs if job["algorithm"] == "fedavg"]
    assert all("model.num_head_layers" not in job for job in fedavg)
    assert {(job["model_name"], job["seed"]) for job in fedavg} == {
        (model, seed) for model in ("mobile", "resnet") for seed in ("42", "43")
    }
    assert all(job["num_rounds"] == "25" for job in jobs)
    # the seed varies fastest, so a setting's seeds are listed together
    assert [job["seed"] for job in jobs[:4]] == ["42", "43", "42", "43"]

    # grids that overlap give each job once
    assert len(expand_jobs({}, [{"a": "1,2"}, {"a": "2,3"}], [])) == 3


def test_command_line_overrides_win_and_a_seed_sweep_replaces_the_seed_count() -> None:
    jobs = as_dicts(
        expand_jobs({"num_rounds": "25"}, FIG4_GRIDS[:1], ["num_rounds=3", "seed=7,9"], seeds=5)
    )
    assert {job["num_rounds"] for job in jobs} == {"3"}
    assert sorted({job["seed"] for job in jobs}) == ["7", "9"]
    # a single seed on the command line is where the seeds start (first_seed is the config's)
    jobs = as_dicts(expand_jobs({}, [{"a": "1"}], ["seed=7"], seeds=3, first_seed=7))
    assert [job["seed"] for job in jobs] == ["7", "8", "9"]


def test_a_grid_that_sets_its_own_seed_keeps_it() -> None:
    grids = [{"a": "1", "seed": "1001"}, {"a": "2", "seed": "1002"}, {"a": "3"}]
    jobs = as_dicts(expand_jobs({}, grids, [], seeds=1, first_seed=42))
    assert [(job["a"], job["seed"]) for job in jobs] == [("1", "1001"), ("2", "1002"), ("3", "42")]


def test_only_filters_the_grids_that_set_the_key() -> None:
    only = {"model.num_head_layers": [1], "model_name": ["resnet"]}
    jobs = as_dicts(expand_jobs({}, FIG4_GRIDS, [], only=only))
    # FedAvg's reference has no head count, so the head filter leaves it alone
    assert jobs == [
        {"model_name": "resnet", "algorithm": "fedper", "model.num_head_layers": "1"},
        {"model_name": "resnet", "algorithm": "fedavg"},
    ]
    # a key no grid sets filters nothing; values nothing has leave no jobs
    assert len(expand_jobs({}, FIG4_GRIDS, [], only={"dataset.num_classes": [8]})) == 9
    assert expand_jobs({}, FIG4_GRIDS, [], only={"algorithm": ["local"]}) == []


def test_tied_settings_follow_their_value_unless_given_on_the_command_line() -> None:
    tied = {"model_name": {"resnet": {"dataset.image_size": 48, "num_rounds": 10}}}
    params = {"num_rounds": "20", "model_name": "mobile,resnet"}
    jobs = as_dicts(expand_jobs(params, [{}], [], tied=tied))
    assert jobs == [
        {"num_rounds": "20", "model_name": "mobile"},
        {"num_rounds": "10", "model_name": "resnet", "dataset.image_size": "48"},
    ]
    jobs = as_dicts(expand_jobs(params, [{}], ["num_rounds=3"], tied=tied))
    assert [(job["num_rounds"], job.get("dataset.image_size")) for job in jobs] == [
        ("3", None),
        ("3", "48"),
    ]


def test_head_layer_counts_and_filters_come_from_the_registries() -> None:
    assert sweeps.head_layer_counts("mobile") == "1,2,3,4"
    assert sweeps.head_layer_counts("resnet") == "1,2,3"
    assert all(sweeps.head_layer_counts(name).startswith("1") for name in MODELS)
    with pytest.raises(FigureError, match="no such model; use one of mobile"):
        sweeps.head_layer_counts("vgg")
    check_only({"algorithm": ["fedper", "local"], "dataset.num_classes": [2]})
    with pytest.raises(
        FigureError, match=f"algorithm=fedpr is unknown: use one of {', '.join(ALGORITHMS)}"
    ):
        check_only({"algorithm": ["fedpr"]})
    with pytest.raises(FigureError, match="model_name=vgg is unknown"):
        check_only({"model_name": ["vgg"]})


def test_each_parallel_job_gets_its_own_gpu_and_an_equal_share_of_cores() -> None:
    gpus = ["0", "1", "2", "3"]
    shares = [job_share(slot, 4, cpu_count=16, gpu_ids=gpus) for slot in range(4)]
    assert [s.cuda_visible_devices for s in shares] == gpus
    assert {s.num_cpus for s in shares} == {4}
    # more jobs than GPUs: round robin; GPUs named by CUDA_VISIBLE_DEVICES keep their names
    assert [job_share(s, 3, 8, ["4", "6"]).cuda_visible_devices for s in range(3)] == [
        "4",
        "6",
        "4",
    ]
    assert job_share(1, 3, 8, []) == JobShare(num_cpus=2, cuda_visible_devices=None)
    assert job_share(2, 3, 2, []).num_cpus == 1  # never less than one core
    with pytest.raises(ValueError):
        job_share(2, 2, 8, gpus)


def test_the_launcher_decides_how_many_jobs_share_the_machine() -> None:
    assert parallel_jobs({"n_jobs": 2}, cpu_count=8) == 2
    assert parallel_jobs({"n_jobs": -1}, cpu_count=8) == 8  # joblib: -1 = every core
    assert parallel_jobs({"n_jobs": -2}, cpu_count=8) == 7
    assert parallel_jobs({}, cpu_count=8) == 1  # basic and submitit launchers
    assert resource_overrides({"n_jobs": 2}, 2, client_cpus=1) == ["++engine.num_cpus=1"]
    assert resource_overrides({"n_jobs": 2}, 8, client_cpus=6) == [
        "++engine.num_cpus=4",
        "client_resources.num_cpus=4",
    ]
    assert resource_overrides({}, 8, client_cpus=1) == []
    slurm = {"cpus_per_task": 8, "gpus_per_node": 1}
    assert resource_overrides(slurm, 64, client_cpus=1) == ["++engine.num_cpus=8"]


@pytest.fixture
def no_held_slot(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sweeps, "_held_slot", None)


def test_a_process_claims_a_free_slot_and_keeps_it(tmp_path: Path, no_held_slot) -> None:
    # another worker holds slot 0 (flock locks conflict between open files, even in one process)
    tmp_path.joinpath("slot0.lock").touch()
    with open(tmp_path / "slot0.lock") as other:
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert claim_slot(tmp_path, 3) == 1
        assert claim_slot(tmp_path, 3) == 1  # the same worker keeps its slot for every job
    sweeps._held_slot[2].close()


def test_parallel_jobs_are_pinned_to_their_gpu(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_held_slot, caplog
) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "5,7")
    callback = PinParallelJobs()
    joblib = OmegaConf.create(
        {"hydra": {"launcher": {"n_jobs": 2}, "sweep": {"dir": str(tmp_path)}}}
    )
    callback.on_multirun_start(joblib)
    assert callback.gpu_ids == ["5", "7"]
    callback.on_job_start(joblib)
    assert sweeps._held_slot[1] == 0
    assert (tmp_path / sweeps.SLOTS_DIR / "slot0.lock").is_file()
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "5"
    sweeps._held_slot[2].close()

    # more jobs than GPUs: said once, when the sweep starts
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "5,7")
    callback = PinParallelJobs()
    with caplog.at_level("WARNING", logger="fedper.sweeps"):
        callback.on_multirun_start(OmegaConf.create({"hydra": {"launcher": {"n_jobs": 3}}}))
    assert "n_jobs=3 but 2 GPU(s)" in caplog.text

    # one job at a time: the job keeps every GPU
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "5,7")
    basic = OmegaConf.create({"hydra": {"launcher": {}, "sweep": {"dir": str(tmp_path)}}})
    callback = PinParallelJobs()
    callback.on_multirun_start(basic)
    callback.on_job_start(basic)
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "5,7"


def test_run_status_reads_the_rounds_a_folder_holds(tmp_path: Path) -> None:
    assert run_status(tmp_path / "missing", 5) == "to run"
    (tmp_path / "results.json").write_text('{"rounds": [{"round": 1}, {"round": 2}]}')
    assert run_status(tmp_path, 5) == "continues after round 2"
    assert run_status(tmp_path, 2) == "finished"
    (tmp_path / "results.json").write_text("{not json")
    assert run_status(tmp_path, 2) == "to run"


def test_each_dataset_cache_is_prepared_once(monkeypatch: pytest.MonkeyPatch) -> None:
    from helpers import make_config

    import fedper.data

    prepared = []
    monkeypatch.setattr(fedper.data, "prepare_dataset", lambda cfg: prepared.append(cfg))
    configs = [
        make_config(["dataset=digits", f"dataset.num_classes={k}", f"seed={seed}", size])
        for k in (4, 8)
        for seed in (42, 43)
        for size in ("dataset.image_size=64", "dataset.image_size=48")
    ]
    sweeps.prepare_datasets(configs)
    # partitions differ, caches do not: one per image size
    assert [cfg.dataset.image_size for cfg in prepared] == [64, 48]
