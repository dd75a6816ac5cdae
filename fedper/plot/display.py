"""How settings are named, styled and ordered: display data from the registries."""

from __future__ import annotations

import math
import numbers

import pandas as pd

from fedper.algorithms import ALGORITHMS
from fedper.data.registry import DATASETS
from fedper.models import MODELS
from fedper.plot.runs import RUN_COLUMNS

# Always in the tables, even when every run shares the value, so a table read on its own
# says what was run.
CORE_KEYS = (
    "dataset.name",
    "model_name",
    "algorithm",
    "dataset.num_classes",
    "model.num_head_layers",
    "num_rounds",
)
COLUMN_TITLES = {
    "dataset.name": "dataset",
    "model_name": "model",
    "algorithm": "algorithm",
    "dataset.num_classes": "classes/client",
    "model.num_head_layers": "head layers",
    "num_rounds": "rounds",
    "dataset.image_size": "image size",
}
NAMED_KEYS = ("algorithm", "model_name", "dataset.name")  # shown by their display label


def is_missing(value: object) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def text(value: object) -> str:
    """A config value as text; whole floats (ints widened by a missing value) lose the `.0`."""
    if is_missing(value):
        return "–"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def algorithm_label(name: object) -> str:
    algorithm = ALGORITHMS.get(str(name))
    return algorithm.label if algorithm else text(name)


def algorithm_style(name: object) -> str | tuple:
    algorithm = ALGORITHMS.get(str(name))
    return algorithm.style if algorithm else "-"


def model_label(name: object) -> str:
    model = MODELS.get(str(name))
    return getattr(model, "label", None) or text(name)


def dataset_label(name: object) -> str:
    dataset = DATASETS.get(str(name))
    return dataset.label if dataset else text(name)


def head_count_matters(name: object) -> bool:
    """Whether the base/head split changes what an algorithm computes."""
    # Averaging the whole network (FedAvg) or nothing (local) makes the head count a label
    # that changes no number; fine-tuning a head, or sharing only the base, makes it matter.
    algorithm = ALGORITHMS.get(str(name))
    if algorithm is None:
        return True
    return algorithm.finetune_head or bool(algorithm.shared_parts and algorithm.personal_parts)


def _count(number: str, noun: str) -> str:
    return f"{number} {noun}{'' if number == '1' else 's'}"


# How a setting's value reads in a legend, a panel title or a comparison, by key.
VALUE_FORMATS = {
    "dataset.num_classes": lambda v: f"{v} classes per client",
    "model.num_head_layers": lambda v: _count(v, "head layer"),
    "num_rounds": lambda v: _count(v, "round"),
    "num_clients": lambda v: _count(v, "client"),
    "num_epochs": lambda v: _count(v, "local epoch"),
    "finetune_epochs": lambda v: _count(v, "fine-tuning epoch"),
    "fedrep.head_epochs": lambda v: _count(v, "head epoch"),
    "dataset.image_size": lambda v: f"{v} px",
    "learning_rate": lambda v: f"lr {v}",
    "batch_size": lambda v: f"batch {v}",
    "model.width_multiplier": lambda v: f"width {v}",
    "model.local_bn": lambda v: "local BN" if v == "True" else "shared BN",
    "partition.alpha": lambda v: f"α = {v}",
    "partition.name": lambda v: PARTITION_NAMES.get(v, v),
    "shift.name": lambda v: "no shift" if v == "none" else f"{v} shift",
}
PARTITION_NAMES = {"dirichlet": "Dirichlet", "pathological": "pathological", "iid": "IID labels"}
# How the data is split and shifted is named by these keys alone in titles: the others of
# their groups (a partition's min_size, a shift's groups and transforms) are details.
NAMING_KEYS = ("partition.name", "partition.alpha", "shift.name")


def format_value(key: str, value: object) -> str:
    """A setting value as a legend, a title or a comparison reads it."""
    if key == "algorithm":
        return algorithm_label(value)
    if key == "model_name":
        return model_label(value)
    if key == "dataset.name":
        return dataset_label(value)
    shown = text(value)
    if key in VALUE_FORMATS and not is_missing(value):
        return VALUE_FORMATS[key](shown)
    return f"{key}={shown}"


def describe(row: pd.Series, keys: list[str]) -> str:
    """The values of `keys` in a row as one readable phrase, e.g. `Dirichlet α = 0.1, 10 clients`."""
    parts = []
    for key in keys:
        value = row.get(key)
        if is_missing(value) or (key.startswith(("partition.", "shift.")) and key not in NAMING_KEYS):  # fmt: skip
            continue  # a partition's or shift's details: its name (and alpha) say which it is
        if key in ("clients_per_round", "min_successful_clients") and text(value) == text(row.get("num_clients")):  # fmt: skip
            continue  # every client, every round: the client count says it
        if key == "model.local_bn" and text(value) == "False":
            continue  # the default: only the exception is named
        if key == "dataset.num_classes" and text(row.get("partition.name")) not in ("pathological", ""):  # fmt: skip
            continue  # classes per client are the pathological split's: other splits ignore it
        parts.append(format_value(key, value))
    if "Dirichlet" in parts and any(p.startswith("α") for p in parts):
        alpha = next(p for p in parts if p.startswith("α"))
        parts = [f"Dirichlet {alpha}" if p == "Dirichlet" else p for p in parts if p != alpha]
    return ", ".join(parts)


def cell(key: str, value: object) -> str:
    """A setting value as a table cell: labels for names, plain text for numbers."""
    return format_value(key, value) if key in NAMED_KEYS else text(value)


def setting_columns(runs: pd.DataFrame) -> list[str]:
    """The core keys, then every other config key whose value differs between settings."""
    keys = [c for c in runs.columns if c not in RUN_COLUMNS]
    per_setting = runs.drop_duplicates("setting")
    varying = [
        key
        for key in keys
        if key not in CORE_KEYS and per_setting[key].astype(str).nunique(dropna=False) > 1
    ]
    return [key for key in CORE_KEYS if key in keys] + sorted(varying)


def _rank(registry: dict, name: object) -> int:
    """Position in a registry's display order; unknown names after the known ones."""
    names = list(registry)
    return names.index(name) if name in names else len(names)


def _order_key(values: pd.Series) -> tuple:
    """Sort settings the way the paper reads: dataset, model, classes, algorithm, heads."""

    def value(key: str) -> tuple:
        item = values.get(key)
        if is_missing(item):
            return (1, "")
        # numbers.Real covers numpy's integers too, so 10 classes sort after 4
        return (0, item if isinstance(item, numbers.Real) else str(item))

    model, algorithm = values.get("model_name"), values.get("algorithm")
    return (
        value("dataset.name"),
        _rank(MODELS, model),
        str(model),
        value("dataset.num_classes"),
        _rank(ALGORITHMS, algorithm),
        str(algorithm),
        value("model.num_head_layers"),
        value("num_rounds"),
        str(values.get("setting")),
    )


def settings_table(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per setting (its key and display columns), in reading order."""
    table = runs.drop_duplicates("setting")[["setting", *setting_columns(runs)]]
    order = sorted(range(len(table)), key=lambda i: _order_key(table.iloc[i]))
    return table.iloc[order].reset_index(drop=True)


def sorted_seeds(seeds: list) -> str:
    """The seeds of a setting as sorted, space-separated text (numbers sort as numbers)."""
    whole = all(isinstance(s, numbers.Integral) for s in seeds)
    return " ".join(text(s) for s in (sorted(seeds) if whole else sorted(seeds, key=str)))


def seeds_cell(seeds: str) -> str:
    """`5 (42–46)`, `3 (1 4 7)`: how many seeds and which, from `sorted_seeds` text."""
    tokens = seeds.split()
    which = seeds
    if len(tokens) > 2 and all(t.lstrip("-").isdigit() for t in tokens):
        first, last = int(tokens[0]), int(tokens[-1])
        if [int(t) for t in tokens] == list(range(first, last + 1)):
            which = f"{first}–{last}"
    return f"{len(tokens)} ({which})"
