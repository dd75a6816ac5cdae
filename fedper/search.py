"""Choose each algorithm's settings from a validation search, by one stated rule.

    python -m fedper.search outputs/figures/search/runs/shift > conf/figure/chosen/family_shift.yaml

Several sources (sweep folders or packed files, e.g. one per shift) are read as one search; a
run (same config and seed) found in two of them is refused rather than counted twice.

Runs are grouped by what a comparison holds fixed (by default the shift, the algorithm and
`model.local_bn`); within a group, a setting is the run's values of the searched keys that its
algorithm uses (learning rate, head layers, local, head and fine-tune epochs). The rule: the
setting with the highest validation accuracy averaged over the last `--last` rounds, averaged
over the search's seeds (its partitions); ties go to the setting whose run folder sorts
first. Test accuracy is never read. The table goes to stderr; stdout is the config
(`hydra.sweeper.grids`) that runs each group once with its chosen setting, for the figure
sweep that reports them.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

from fedper.errors import FedPerError
from fedper.plot.runs import SEED_KEYS, PlotError, read_packed, setting_key

GROUP_KEYS = ("shift", "algorithm", "model.local_bn")
SETTING_KEYS = ("learning_rate", "model.num_head_layers", "fedrep.head_epochs",
                "finetune_epochs", "num_epochs")  # fmt: skip


class SearchError(FedPerError):
    """The search's runs cannot be read or are not finished."""


def setting_value(config: dict, key: str):
    """A dotted key's value in a resolved config; a config group's chosen option by its name."""
    value = config
    for part in key.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value.get("name") if isinstance(value, dict) else value


def validation_score(rounds: list[dict], last: int) -> float:
    """Mean validation accuracy over the last `last` evaluated rounds (nan when there is none)."""
    evaluated = [r for r in rounds if r.get("evaluated", True)]
    values = [r.get("val_accuracy") for r in evaluated[-last:]]
    values = [v for v in values if v is not None and not math.isnan(v)]
    return sum(values) / len(values) if values else float("nan")


def run_files(root: Path) -> list[tuple[Path, dict]]:
    """(where, results) of every run: the results.json files under a sweep folder, in name
    order, or the runs of a packed sweep file (`python -m fedper.plot pack`), in run order."""
    if root.is_file():
        try:
            runs = read_packed(root)
        except PlotError as error:
            raise SearchError(str(error)) from None
        return [(root / run["run"], run) for run in sorted(runs, key=lambda run: run["run"])]
    found = []
    for path in sorted(root.rglob("results.json")):
        try:
            found.append((path, json.loads(path.read_text())))
        except (OSError, ValueError) as error:
            raise SearchError(f"{path} cannot be read ({error}): rerun the search sweep") from None
    return found


def read_runs(roots: Path | Sequence[Path], last: int) -> list[dict]:
    """Every finished run under `roots` (sweep folders or packed sweeps): its resolved config
    and validation score."""
    roots = [roots] if isinstance(roots, Path) else list(roots)
    runs = []
    seen: dict[tuple[str, ...], Path] = {}
    for path, results in (found for root in roots for found in run_files(root)):
        try:
            config, rounds = results["config"], results["rounds"]
        except KeyError as error:
            raise SearchError(f"{path} holds no {error}: rerun the search sweep") from None
        if len(rounds) < int(config["num_rounds"]):
            raise SearchError(
                f"{path.parent} has {len(rounds)} of {config['num_rounds']} rounds: finish the "
                "search sweep (the same command continues it) before choosing"
            )
        same = (setting_key(config), *(str(setting_value(config, k)) for k in sorted(SEED_KEYS)))
        if same in seen:
            raise SearchError(
                f"{path} repeats the run of {seen[same]} (same config and seed): "
                "give each search run once"
            )
        seen[same] = path
        score = validation_score(rounds, last)
        unused = results.get("unused_settings", [])
        runs.append({"config": config, "score": score, "unused": unused, "path": path})
    if not runs:
        where = ", ".join(str(root) for root in roots)
        raise SearchError(f"no results.json under {where}: run the search sweep first")
    return runs


def choose(runs: list[dict], group_keys=GROUP_KEYS, setting_keys=SETTING_KEYS) -> list[dict]:
    """Per group, every setting's mean score over seeds and the chosen one (highest mean).

    A run's setting is its value of each of `setting_keys` that its algorithm and model use
    (results.json's `unused_settings` names the others), so the chosen setting runs again
    exactly as searched. Returns one entry per group, in the order groups first appear:
    `group` (key -> value), `settings` (list of (setting, mean score, seeds)) and `chosen`.
    """
    scores: dict[tuple, dict[tuple, list[float]]] = defaultdict(lambda: defaultdict(list))
    for run in runs:
        config, unused = run["config"], set(run.get("unused", ()))
        group = tuple(setting_value(config, key) for key in group_keys)
        setting = tuple(
            (key, setting_value(config, key)) for key in setting_keys if key not in unused
        )
        scores[group][setting].append(run["score"])
    chosen = []
    for group, settings in scores.items():
        rows = [(dict(setting), mean(values), len(values)) for setting, values in settings.items()]
        seeds = {n for _, _, n in rows}
        if len(seeds) > 1:
            raise SearchError(
                f"{dict(zip(group_keys, group, strict=True))}: settings were run on different "
                f"numbers of seeds ({sorted(seeds)}): finish the search sweep before choosing"
            )
        best = max(rows, key=lambda row: -math.inf if math.isnan(row[1]) else row[1])
        chosen.append(
            {"group": dict(zip(group_keys, group, strict=True)), "settings": rows, "chosen": best}
        )
    return chosen


def mean(values: list[float]) -> float:
    return sum(values) / len(values)


def override_value(value) -> str:
    """A value as a Hydra override writes it (true, not True)."""
    return str(value).lower() if isinstance(value, bool) else str(value)


def grids_yaml(chosen: list[dict], source: str, last: int) -> str:
    """The chosen settings as a figure config fragment: one grid per group."""
    lines = [
        "# @package _global_",
        f"# Settings chosen on validation by `python -m fedper.search {source} --last {last}`:",
        f"# per group, the best mean validation accuracy over the last {last} rounds, averaged",
        "# over the search's seeds. Regenerate with that command; do not edit by hand.",
        "hydra:",
        "  sweeper:",
        "    grids:",
    ]
    for entry in chosen:
        setting, score, seeds = entry["chosen"]
        pairs = {**entry["group"], **setting}
        body = ", ".join(f"{key}: {override_value(value)}" for key, value in pairs.items())
        lines.append(f"      - {{{body}}}  # validation {score:.3f} over {seeds} seed(s)")
    return "\n".join(lines) + "\n"


def table(chosen: list[dict]) -> str:
    """Every group's settings and scores, the chosen one marked."""
    lines = []
    for entry in chosen:
        lines.append(", ".join(f"{k}={override_value(v)}" for k, v in entry["group"].items()))
        for setting, score, seeds in sorted(entry["settings"], key=lambda row: -row[1]):
            mark = "*" if (setting, score, seeds) == entry["chosen"] else " "
            shown = " ".join(f"{k}={override_value(v)}" for k, v in setting.items())
            lines.append(f"  {mark} {score:.4f}  {shown}  ({seeds} seed(s))")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m fedper.search", description=__doc__.split("\n")[0]
    )
    parser.add_argument("runs", type=Path, nargs="+",
                        help="the search sweep's folders (hydra.sweep.dir) or packed *.jsonl.gz")  # fmt: skip
    parser.add_argument("--last", type=int, default=5, help="rounds averaged at the end (5)")
    args = parser.parse_args(argv)
    try:
        chosen = choose(read_runs(args.runs, args.last))
    except FedPerError as error:
        print(f"fedper: error: {error}", file=sys.stderr)
        return 2
    print(table(chosen), file=sys.stderr)
    sys.stdout.write(grids_yaml(chosen, " ".join(str(r) for r in args.runs), args.last))
    return 0


if __name__ == "__main__":
    sys.exit(main())
