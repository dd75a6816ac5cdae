"""The shift benchmark's sweeps: the search gives every algorithm FedPer's budget on seeds no
reported run uses, and the family sweep runs every searched group once per seed."""

from __future__ import annotations

from collections import Counter

import yaml
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from fedper import CONF_DIR
from fedper.sweeps import expand_jobs
from fedper.validation import validate_config

VARIANTS = {("fedper", "False"), ("fedper", "True"), ("fedavg", "False"), ("fedavg_ft", "False"),
            ("local", "False"), ("fedrep", "False"), ("lg_fedavg", "False"), ("fedbn", "False")}  # fmt: skip
SHIFTS = {"none", "feature", "concept"}
# each shift alone: label skew (the paper's split), feature or concept shift on IID labels
PARTITION_OF = {"none": "pathological", "feature": "iid", "concept": "iid"}


def sweep_jobs(figure: str) -> tuple[list[dict[str, str]], list]:
    """The sweep's jobs as key -> value, and the composed config of each grid's first job."""
    with initialize_config_dir(str(CONF_DIR), version_base=None):
        sweep = compose("base", [f"+figure={figure}"], return_hydra_config=True)
        options = OmegaConf.to_container(sweep.hydra.sweeper, resolve=True)
        jobs = expand_jobs(options["params"], options["grids"], [], tied=options["tied"],
                           only=options["only"], seeds=options["seeds"], first_seed=sweep.seed)  # fmt: skip
        firsts = {}
        for job in jobs:
            as_dict = dict(line.split("=", 1) for line in job)
            firsts.setdefault((as_dict["algorithm"], as_dict.get("model.local_bn")), job)
        configs = [compose("base", [f"+figure={figure}", *job]) for job in firsts.values()]
    return [dict(line.split("=", 1) for line in job) for job in jobs], configs


def variant(job: dict[str, str]) -> tuple[str, str]:
    return job["algorithm"], job.get("model.local_bn", "False")


def test_the_search_gives_every_algorithm_the_same_budget_on_unreported_seeds():
    jobs, configs = sweep_jobs("search_shift")
    for cfg in configs:
        validate_config(cfg)
        assert cfg.dataset.val_fraction > 0 and cfg.dataset.name == "digits"
    budget = Counter((variant(job), job["shift"], job["seed"]) for job in jobs)
    assert set(budget.values()) == {6}  # 2 learning rates x 3 values of one knob of its own
    assert {v for v, _, _ in budget} == VARIANTS
    assert {s for _, s, _ in budget} == SHIFTS
    assert {seed for _, _, seed in budget} == {"101", "102"}
    assert all(job["partition"] == PARTITION_OF[job["shift"]] for job in jobs)
    # FedRep keeps its paper's head (the classifier) and searches its head epochs up to 10
    fedrep = [job for job in jobs if job["algorithm"] == "fedrep"]
    assert {job["model.num_head_layers"] for job in fedrep} == {"1"}
    assert {job["fedrep.head_epochs"] for job in fedrep} == {"1", "5", "10"}
    assert len(jobs) == 3 * 8 * 6 * 2


def test_the_family_runs_every_searched_group_once_per_reported_seed():
    family, configs = sweep_jobs("family_shift")
    for cfg in configs:
        validate_config(cfg)
    groups = Counter((variant(job), job["shift"]) for job in family)
    # the groups the committed choice holds (fedper.search writes one grid per searched
    # group), each a group of the search's design, each once per reported seed
    chosen = yaml.safe_load((CONF_DIR / "figure" / "chosen" / "family_shift.yaml").read_text())
    grids = chosen["hydra"]["sweeper"]["grids"]
    assert set(groups) == {((g["algorithm"], str(g["model.local_bn"])), g["shift"]) for g in grids}
    assert set(groups) <= {(v, s) for v in VARIANTS for s in SHIFTS}
    assert set(groups.values()) == {5}
    assert {job["seed"] for job in family} == {"42", "43", "44", "45", "46"}
    assert all(job["partition"] == PARTITION_OF[job["shift"]] for job in family)
    search, _ = sweep_jobs("search_shift")
    assert not {job["seed"] for job in family} & {job["seed"] for job in search}
    # every family run sets the keys the search varies, so the chosen values are what runs
    for job in family:
        assert {"learning_rate", "model.num_head_layers", "num_epochs"} <= set(job)
