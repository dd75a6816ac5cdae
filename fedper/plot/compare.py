"""Paired per-seed differences of settings that differ in one key (`--compare key=value`).

`--compare algorithm=fedper` groups the settings that are equal on every key but `algorithm`
and compares every other setting of a group against the one with algorithm=fedper, seed by
seed: only seeds both ran count, and the interval is Student t over those differences. Each
measure's comparisons in one table (every `--compare`, every group) form one family: their
p-values are adjusted together with Holm's method, and a difference is resolved at the
family level when its adjusted p-value is below 0.05.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass

import pandas as pd

from fedper.plot.display import format_value, setting_columns, settings_table, sorted_seeds, text
from fedper.plot.runs import PlotError
from fedper.plot.stats import (
    ALPHA,
    DEFAULT_TARGET,
    LOWER_IS_BETTER,
    Interval,
    holm,
    interval_columns,
    mean_interval,
    p_value,
    reuse_text,
    run_measures,
)

log = logging.getLogger("fedper.plot")

# measures compared seed by seed, in the tables' order (see fedper.plot.stats.MEASURES)
PAIRED_MEASURES = (
    "final", "last5", "auc", "round_to_target", "final_weighted", "last5_weighted",
)  # fmt: skip


@dataclass(frozen=True)
class Comparison:
    """One `--compare key=value`: the reference is the setting with key=value in each group."""

    key: str
    value: str
    tuned: tuple[str, ...] = ()  # keys each setting was tuned on: they may differ within a pair

    @property
    def name(self) -> str:
        return f"{self.key}={self.value}"

    def is_reference(self, setting: dict) -> bool:
        found = setting.get(self.key)
        # JSON true reads as `True`; a user types `true`
        return text(found) == self.value or (
            isinstance(found, bool) and str(found).lower() == self.value.lower()
        )


def parse_comparison(spec: str, tuned: Iterable[str] = ()) -> Comparison:
    """`algorithm=fedper` -> Comparison("algorithm", "fedper"), or a PlotError saying the form;
    `tuned` (`--tuned`) names keys that may differ between the two sides of a pair."""
    key, sep, value = (part.strip() for part in spec.partition("="))
    if not (key and sep and value):
        raise PlotError(f"--compare {spec}: write key=value, e.g. --compare algorithm=fedper")
    return Comparison(key, value, tuple(tuned))


def verdict(
    difference: Interval,
    ahead_if_positive: str,
    ahead_if_negative: str,
    resolved: bool | None = None,
) -> str:
    """`resolved: X ahead` when resolved (default: the interval excludes 0), else `not resolved`."""
    if difference.n == 0:
        return "no shared seeds"
    if difference.n == 1:
        return "not resolved (1 seed, no interval)"
    if not (not difference.contains_zero() if resolved is None else resolved):
        return "not resolved"
    return f"resolved: {ahead_if_positive if difference.mean > 0 else ahead_if_negative} ahead"


def _without(setting: dict, keys: tuple[str, ...]) -> str:
    return json.dumps(
        {k: v for k, v in setting.items() if k not in keys}, sort_keys=True, default=str
    )


def _pairs(comparison: Comparison, settings: pd.DataFrame) -> Iterable[tuple[pd.Series, dict, pd.Series, dict]]:  # fmt: skip
    """(reference row, its setting, other row, its setting) for every pair to compare."""
    ignored = (comparison.key, *comparison.tuned)
    parsed = {s: json.loads(s) for s in settings["setting"]}
    references = [row for _, row in settings.iterrows() if comparison.is_reference(parsed[row["setting"]])]  # fmt: skip
    groups = [_without(parsed[row["setting"]], ignored) for row in references]
    if comparison.tuned and len(set(groups)) < len(groups):
        raise PlotError(
            f"--compare {comparison.name} with --tuned {' '.join(comparison.tuned)}: several "
            f"settings with {comparison.name} differ only in tuned keys; keep one of them"
        )
    for reference, group in zip(references, groups, strict=True):
        for _, other in settings.iterrows():
            theirs = parsed[other["setting"]]
            if not comparison.is_reference(theirs) and _without(theirs, ignored) == group:
                yield reference, parsed[reference["setting"]], other, theirs


def _reuse_of_pair(reference: tuple[str, str], other: tuple[str, str]) -> str:
    """Which side's runs are reused from where: `both: figure 2 (5 of 5 runs)`, `FedPer: ...`."""
    if reference[1] and reference[1] == other[1]:
        return f"both: {reference[1]}"
    return "; ".join(f"{label}: {reuse}" for label, reuse in (reference, other) if reuse)


def paired_rows(
    comparison: Comparison, settings: pd.DataFrame, per_run: pd.DataFrame
) -> list[dict]:
    """The rows of one comparison: every (reference, other, measure) in reading order."""
    key = comparison.key
    context = [c for c in settings.columns if c not in ("setting", key)]
    # a run per seed and setting; repeats of a seed (two copies of a sweep) are averaged
    by_seed = per_run.groupby(["setting", "seed"], sort=False)
    values = by_seed[[*PAIRED_MEASURES, "reached_target"]].mean()
    reuse = per_run.groupby("setting", sort=False)["reused_from"].agg(reuse_text)
    rows = []
    for reference, ref, other, theirs in _pairs(comparison, settings):
        ref_label, other_label = format_value(key, ref.get(key)), format_value(key, theirs.get(key))
        mine, others = values.loc[reference["setting"]], values.loc[other["setting"]]
        reused = _reuse_of_pair(
            (ref_label, reuse[reference["setting"]]), (other_label, reuse[other["setting"]])
        )
        for measure in PAIRED_MEASURES:
            differences = (others[measure] - mine[measure]).dropna().sort_index()  # shared seeds
            interval = mean_interval(differences)
            never = 0
            if measure == "round_to_target":
                shared = differences.index
                never = int((mine.loc[shared, "reached_target"] < 1).sum())
                never += int((others.loc[shared, "reached_target"] < 1).sum())
            better, worse = (ref_label, other_label) if measure in LOWER_IS_BETTER else (other_label, ref_label)  # fmt: skip
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
                    "never_reached_target": never,
                    "p_value": p_value(differences),
                    "verdict": verdict(interval, better, worse),
                    "better_if_positive": better,
                    "better_if_negative": worse,
                    "reused_from": reused,
                }
            )
    return rows


def adjust_families(table: pd.DataFrame) -> pd.DataFrame:
    """Holm-adjusted p-values and verdicts, a family per measure over the whole table."""
    table = table.copy()
    table["p_holm"] = float("nan")
    table["family_size"] = 0
    for _, rows in table.groupby("measure", sort=False):
        adjusted = holm(rows["p_value"].tolist())
        table.loc[rows.index, "p_holm"] = adjusted
        table.loc[rows.index, "family_size"] = int(rows["p_value"].notna().sum())
    table["verdict_holm"] = [
        verdict(
            Interval(row["difference_mean"], row["difference_half_width"], row["difference_n"]),
            row["better_if_positive"],
            row["better_if_negative"],
            resolved=bool(row["p_holm"] < ALPHA),
        )
        for _, row in table.iterrows()
    ]
    return table.drop(columns=["better_if_positive", "better_if_negative"])


def paired_differences(
    runs: pd.DataFrame, comparisons: Iterable[Comparison], target: float = DEFAULT_TARGET
) -> pd.DataFrame:
    """Every comparison's paired per-seed differences (other minus reference), a row each."""
    settings = settings_table(runs)
    per_run = run_measures(runs, target)
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
    columns += ["differences", *interval_columns("difference", mean_interval([]))]
    columns += ["never_reached_target", "p_value", "verdict", "better_if_positive"]
    columns += ["better_if_negative", "reused_from"]
    table = adjust_families(pd.DataFrame(rows, columns=columns))
    table["target"] = target
    ordered = columns[: columns.index("never_reached_target") + 1] + ["target", "p_value"]
    ordered += ["verdict", "p_holm", "family_size", "verdict_holm", "reused_from"]
    return table[ordered]
