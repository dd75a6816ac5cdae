"""Paired per-seed differences of settings that differ in one key (`--compare key=value`)."""

# `--compare algorithm=fedper` groups the settings that are equal on every key but `algorithm`
# and compares every other setting of a group against the one with algorithm=fedper, seed by
# seed: only seeds both ran count, and the interval is Student t over those differences.

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass

import pandas as pd

from fedper.plot.display import format_value, setting_columns, settings_table, sorted_seeds, text
from fedper.plot.runs import PlotError
from fedper.plot.stats import Interval, interval_columns, mean_interval, run_measures

log = logging.getLogger("fedper.plot")

PAIRED_MEASURES = ("final", "last5")


@dataclass(frozen=True)
class Comparison:
    """One `--compare key=value`: the reference is the setting with key=value in each group."""

    key: str
    value: str

    @property
    def name(self) -> str:
        return f"{self.key}={self.value}"

    def is_reference(self, setting: dict) -> bool:
        found = setting.get(self.key)
        # JSON true reads as `True`; a user types `true`
        return text(found) == self.value or (
            isinstance(found, bool) and str(found).lower() == self.value.lower()
        )


def parse_comparison(spec: str) -> Comparison:
    """`algorithm=fedper` -> Comparison("algorithm", "fedper"), or a PlotError saying the form."""
    key, sep, value = (part.strip() for part in spec.partition("="))
    if not (key and sep and value):
        raise PlotError(f"--compare {spec}: write key=value, e.g. --compare algorithm=fedper")
    return Comparison(key, value)


def verdict(difference: Interval, ahead_if_positive: str, ahead_if_negative: str) -> str:
    """`resolved: X ahead` when the interval excludes 0, else `not resolved` (and why)."""
    if difference.n == 0:
        return "no shared seeds"
    if difference.n == 1:
        return "not resolved (1 seed, no interval)"
    if difference.contains_zero():
        return "not resolved"
    return f"resolved: {ahead_if_positive if difference.mean > 0 else ahead_if_negative} ahead"


def _without(setting: dict, key: str) -> str:
    return json.dumps({k: v for k, v in setting.items() if k != key}, sort_keys=True, default=str)


def paired_rows(
    comparison: Comparison, settings: pd.DataFrame, per_run: pd.DataFrame
) -> list[dict]:
    """The rows of one comparison: every (reference, other, measure) in reading order."""
    key = comparison.key
    parsed = {s: json.loads(s) for s in settings["setting"]}
    context = [c for c in settings.columns if c not in ("setting", key)]
    # a run per seed and setting; repeats of a seed (two copies of a sweep) are averaged
    by_seed = per_run.groupby(["setting", "seed"], sort=False)[list(PAIRED_MEASURES)].mean()
    rows = []
    for _, reference in settings.iterrows():
        ref = parsed[reference["setting"]]
        if not comparison.is_reference(ref):
            continue
        group = _without(ref, key)
        for _, other in settings.iterrows():
            theirs = parsed[other["setting"]]
            if comparison.is_reference(theirs) or _without(theirs, key) != group:
                continue
            ref_label = format_value(key, ref.get(key))
            other_label = format_value(key, theirs.get(key))
            for measure in PAIRED_MEASURES:
                mine = by_seed.loc[reference["setting"], measure]
                others = by_seed.loc[other["setting"], measure]
                differences = (others - mine).dropna()  # aligned on seed: shared seeds only
                differences = differences.sort_index()
                interval = mean_interval(differences)
                rows.append(
                    {
                        "compare": comparison.name,
                        **{c: reference[c] for c in context},  # the compared key stays empty
                        "key": key,
                        "reference": text(ref.get(key)),
                        "other": text(theirs.get(key)),
                        "comparison": f"{other_label} − {ref_label}",
                        "measure": measure,
                        "seeds": sorted_seeds(differences.index.tolist()),
                        "differences": " ".join(f"{d:+.6f}" for d in differences),
                        **interval_columns("difference", interval),
                        "verdict": verdict(interval, other_label, ref_label),
                    }
                )
    return rows


def paired_differences(runs: pd.DataFrame, comparisons: Iterable[Comparison]) -> pd.DataFrame:
    """Every comparison's paired per-seed differences (other minus reference), a row each."""
    settings = settings_table(runs)
    per_run = run_measures(runs)
    keys = setting_columns(runs)
    rows = []
    for comparison in comparisons:
        if comparison.key not in keys:
            raise PlotError(
                f"--compare {comparison.name}: no setting varies or shows the key "
                f"{comparison.key}; use one of {', '.join(keys)}"
            )
        if not any(comparison.is_reference(json.loads(s)) for s in settings["setting"]):
            found = ", ".join(text(v) for v in settings[comparison.key].drop_duplicates())
            raise PlotError(
                f"--compare {comparison.name}: no setting has {comparison.name}; "
                f"its values here are {found}"
            )
        found_rows = paired_rows(comparison, settings, per_run)
        if not found_rows:
            log.warning(
                "--compare %s: no other setting differs only in %s", comparison.name, comparison.key
            )
        rows += found_rows
    columns = ["compare", *keys, "key", "reference", "other", "comparison", "measure", "seeds"]
    columns += ["differences", *interval_columns("difference", mean_interval([])), "verdict"]
    return pd.DataFrame(rows, columns=columns)
