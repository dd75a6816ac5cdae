"""fedper.search: each group's setting is chosen on validation by the stated rule, and the
printed config runs exactly those settings."""

from __future__ import annotations

import gzip
import json
import re
import shutil
from pathlib import Path

import pytest
import yaml
from helpers import ROOT

from fedper.plot.pack import PACKED_FORMAT
from fedper.search import choose, main, read_runs, validation_score
from fedper.sweeps import expand_jobs


def write_run(root: Path, name: str, val: list[float], test: float = 0.5, rounds=None, **keys):
    """A run folder with the parts of results.json the choice reads."""
    config = {
        "seed": 101, "algorithm": "fedper", "shift": {"name": "none"}, "num_rounds": len(val),
        "learning_rate": 0.05, "num_epochs": 1, "finetune_epochs": 1,
        "model": {"local_bn": False, "num_head_layers": 2}, "fedrep": {"head_epochs": 1},
    }  # fmt: skip
    for key, value in keys.items():
        *parents, leaf = key.split("__")
        node = config
        for parent in parents:
            node = node[parent]
        node[leaf] = value
    entries = [{"round": i + 1, "val_accuracy": v, "accuracy": test} for i, v in enumerate(val)]
    folder = root / name
    folder.mkdir(parents=True)
    unused = ["fedrep.head_epochs"] if config["algorithm"] != "fedrep" else []
    unused.append("finetune_epochs")
    results = {
        "config": config,
        "rounds": entries[: rounds or len(entries)],
        "unused_settings": unused,
    }
    (folder / "results.json").write_text(json.dumps(results))


@pytest.fixture
def search(tmp_path: Path) -> Path:
    root = tmp_path / "runs"
    # FedPer: head layers 1 vs 3 at two learning rates, two seeds each
    for seed, bump in ((101, 0.0), (102, 0.02)):
        for lr in (0.01, 0.05):
            for heads in (1, 3):
                good = 0.9 if (lr, heads) == (0.05, 3) else 0.7
                # the last five rounds decide; the early rounds favour another setting
                val = [0.99] * 3 + [good + bump] * 5
                write_run(root, f"fedper_lr{lr}_h{heads}_s{seed}", val, seed=seed,
                          learning_rate=lr, model__num_head_layers=heads)  # fmt: skip
    # FedRep under a concept shift: head epochs 1 vs 10 (test accuracy says the opposite)
    for seed in (101, 102):
        for epochs, val, test in ((1, 0.6, 0.99), (10, 0.8, 0.1)):
            write_run(root, f"fedrep_e{epochs}_s{seed}", [val] * 8, test=test, seed=seed,
                      algorithm="fedrep", shift={"name": "concept"},
                      fedrep__head_epochs=epochs)  # fmt: skip
    return root


def test_the_best_mean_validation_over_the_last_rounds_and_seeds_wins(search: Path):
    chosen = choose(read_runs(search, last=5))
    assert [entry["group"] for entry in chosen] == [
        {"shift": "none", "algorithm": "fedper", "model.local_bn": False},
        {"shift": "concept", "algorithm": "fedrep", "model.local_bn": False},
    ]
    fedper, fedrep = chosen
    setting, score, seeds = fedper["chosen"]
    # every searched key the run uses, so the choice runs again exactly as searched
    assert setting == {"learning_rate": 0.05, "model.num_head_layers": 3, "num_epochs": 1}
    assert score == pytest.approx(0.91) and seeds == 2
    assert len(fedper["settings"]) == 4
    # only validation counts: the setting with the better test accuracy loses
    assert fedrep["chosen"][0]["fedrep.head_epochs"] == 10
    # with the whole curve, the early rounds would have changed the mean, not the winner here
    assert choose(read_runs(search, last=8))[0]["chosen"][0] == setting


def test_the_printed_config_runs_each_group_with_its_choice(search: Path, capsys):
    assert main([str(search)]) == 0
    out, err = capsys.readouterr()
    assert "* 0.9100  learning_rate=0.05 model.num_head_layers=3 num_epochs=1  (2 seed(s))" in err
    grids = yaml.safe_load(out)["hydra"]["sweeper"]["grids"]
    jobs = expand_jobs({}, grids, [], seeds=5, first_seed=42)
    assert len(jobs) == 2 * 5
    assert jobs[0][:5] == ["shift=none", "algorithm=fedper", "model.local_bn=False",
                           "learning_rate=0.05", "model.num_head_layers=3"]  # fmt: skip
    assert "fedrep.head_epochs=10" in jobs[5] and "shift=concept" in jobs[5]


def test_an_unfinished_or_missing_search_is_refused_in_one_line(tmp_path: Path, capsys):
    assert main([str(tmp_path / "none")]) == 2
    assert capsys.readouterr().err.strip().endswith("run the search sweep first")
    write_run(tmp_path / "runs", "a", [0.5] * 8, rounds=6)
    assert main([str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("fedper: error: ") and "has 6 of 8 rounds: finish the search" in err
    assert "\n" not in err


def test_settings_run_on_different_numbers_of_seeds_are_refused(tmp_path: Path):
    root = tmp_path / "runs"
    write_run(root, "a101", [0.5] * 5, seed=101, learning_rate=0.01)
    write_run(root, "a102", [0.5] * 5, seed=102, learning_rate=0.01)
    write_run(root, "b101", [0.9] * 5, seed=101, learning_rate=0.05)
    with pytest.raises(Exception, match=r"different numbers of seeds \(\[1, 2\]\)"):
        choose(read_runs(root, last=5))


def test_a_packed_search_gives_the_same_choice_as_its_folder(search: Path, tmp_path: Path):
    packed = tmp_path / "search_runs.jsonl.gz"
    with gzip.open(packed, "wt", encoding="utf-8") as out:
        for path in sorted(search.rglob("results.json")):
            run = json.loads(path.read_text())
            out.write(json.dumps({"format": PACKED_FORMAT, "run": path.parent.name, **run}) + "\n")
    assert choose(read_runs(packed, last=5)) == choose(read_runs(search, last=5))


def test_rounds_without_evaluation_are_not_among_the_last_rounds():
    rounds = [{"val_accuracy": 0.9}, {"val_accuracy": 0.8}, {"evaluated": False}]
    assert validation_score(rounds, last=2) == pytest.approx(0.85)


def test_searches_split_over_several_sources_choose_as_one(search: Path, tmp_path: Path):
    # one source per shift, as when each shift's search ran as its own sweep
    concept, rest = tmp_path / "concept", tmp_path / "rest"
    search_copy = tmp_path / "whole"
    shutil.copytree(search, search_copy)
    for folder in sorted(search.iterdir()):
        target = concept if folder.name.startswith("fedrep") else rest
        target.mkdir(exist_ok=True)
        folder.rename(target / folder.name)

    def chosen(sources):
        return {entry["group"]["algorithm"]: entry["chosen"][0] for entry in
                choose(read_runs(sources, last=5))}  # fmt: skip

    assert chosen([rest, concept]) == chosen([concept, rest]) == chosen(search_copy)
    assert chosen([rest, concept])["fedper"]["model.num_head_layers"] == 3
    assert chosen([rest, concept])["fedrep"]["fedrep.head_epochs"] == 10


def test_a_run_found_in_two_sources_is_refused(search: Path, tmp_path: Path, capsys):
    copy = tmp_path / "copy"
    first = sorted(search.iterdir())[0]
    (copy / first.name).mkdir(parents=True)
    (copy / first.name / "results.json").write_bytes((first / "results.json").read_bytes())
    assert main([str(search), str(copy), "--last", "5"]) == 2
    err = capsys.readouterr().err.strip()
    assert "repeats the run of" in err and "\n" not in err


def test_the_committed_choice_is_what_the_committed_search_chooses(capsys):
    """conf/figure/chosen/family_shift.yaml is fedper.search's output on the packed searches it
    names, so the family sweep runs exactly what validation chose."""
    chosen = ROOT / "conf" / "figure" / "chosen" / "family_shift.yaml"
    text = chosen.read_text()
    command = re.search(r"`python -m fedper\.search (.+?)`", text).group(1).split()
    sources = [arg for arg in command if arg.endswith(".jsonl.gz")]
    assert sources and all((ROOT / source).is_file() for source in sources)
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(ROOT)
        assert main(command) == 0
    assert capsys.readouterr().out == text
