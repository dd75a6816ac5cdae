"""Statistics over seeds: per-run measures, 95% confidence intervals, p-values and Holm's method."""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from fedper.plot.display import settings_table, sorted_seeds

log = logging.getLogger("fedper.plot")

CONFIDENCE = 0.95  # two-sided, Student t over seeds
ALPHA = 1 - CONFIDENCE  # a difference is resolved when its p-value is below this
LAST_ROUNDS = 5  # the level of a curve: the mean of its last evaluated rounds (all, if fewer)
DEFAULT_TARGET = 0.9  # speed: the first round whose accuracy reaches this (same for every run)
# Per-run measures over a run's evaluated rounds, each summarized over seeds as mean ± half-width
# (accuracy is the unweighted mean over clients, the paper's; *_weighted weighs clients by
# their number of test examples):
#   final            accuracy in the last evaluated round
#   last5            mean accuracy over the last LAST_ROUNDS evaluated rounds
#   auc              mean accuracy over all evaluated rounds (area under the curve per round)
#   round_to_target  first round whose accuracy reaches the target; a run that never does
#                    counts as its last round + 1 (a bound in its favour) and is counted
#   best_val_test    test accuracy in the round with the highest validation accuracy
MEASURES = (
    "final", "last5", "auc", "round_to_target", "best_val_test", "final_weighted",
    "last5_weighted",
)  # fmt: skip
LOWER_IS_BETTER = frozenset({"round_to_target"})
INTERVAL_FIELDS = ("mean", "half_width", "ci_low", "ci_high", "n")


@dataclass(frozen=True)
class Interval:
    """A mean over n values and the half-width of its confidence interval (NaN below 2)."""

    mean: float
    half_width: float
    n: int

    @property
    def low(self) -> float:
        return self.mean - self.half_width

    @property
    def high(self) -> float:
        return self.mean + self.half_width

    def contains_zero(self) -> bool:
        """True also when there is no interval (fewer than 2 values): nothing is resolved."""
        return not (self.low > 0 or self.high < 0)


def t_quantile(n: int) -> float:
    """The two-sided CONFIDENCE quantile of Student's t with n - 1 degrees of freedom."""
    return float(stats.t.ppf(0.5 + CONFIDENCE / 2, n - 1))


def _finite(values: Iterable[float]) -> np.ndarray:
    return np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=float)


def mean_interval(values: Iterable[float]) -> Interval:
    """Mean and Student-t interval of the finite values; one value has a mean but no interval."""
    # half-width t(0.975, n-1) * s / sqrt(n), s the sample std (ddof=1)
    data = _finite(values)
    if data.size == 0:
        return Interval(math.nan, math.nan, 0)
    mean = float(data.mean())
    if data.size == 1:
        return Interval(mean, math.nan, 1)
    half_width = t_quantile(data.size) * float(data.std(ddof=1)) / math.sqrt(data.size)
    return Interval(mean, half_width, int(data.size))


def p_value(differences: Iterable[float]) -> float:
    """Two-sided p-value of the one-sample t-test of mean 0 (the interval's test); NaN below 2."""
    data = _finite(differences)
    if data.size < 2:
        return math.nan
    if np.ptp(data) <= 1e-12:  # no spread (up to rounding): t is infinite unless the mean is 0
        return 1.0 if abs(data.mean()) <= 1e-12 else 0.0
    return float(stats.ttest_1samp(data, 0.0).pvalue)


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values of one family; NaN (no test) stays NaN, outside it.

    Sorted ascending p_(1) <= ... <= p_(m): adjusted p_(i) = max over j <= i of
    min(1, (m - j + 1) p_(j)). Rejecting where the adjusted p < ALPHA keeps the chance of any
    false "resolved" in the family at most ALPHA.
    """
    tested = sorted((p, i) for i, p in enumerate(p_values) if not math.isnan(p))
    adjusted = [math.nan] * len(p_values)
    running = 0.0
    for rank, (p, index) in enumerate(tested):
        running = max(running, min(1.0, (len(tested) - rank) * p))
        adjusted[index] = running
    return adjusted


def interval_columns(prefix: str, interval: Interval) -> dict[str, float | int]:
    """`<prefix>_mean`, `_half_width`, `_ci_low`, `_ci_high`, `_n`: the CSV's numbers."""
    values = (interval.mean, interval.half_width, interval.low, interval.high, interval.n)
    return {
        f"{prefix}_{field}": value for field, value in zip(INTERVAL_FIELDS, values, strict=True)
    }


def _finite_mean(values: np.ndarray) -> float:
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if finite.size else math.nan


def measure_run(rounds: pd.DataFrame, target: float = DEFAULT_TARGET) -> dict[str, float]:
    """One run's measures from its rows of the runs table (see MEASURES)."""
    rounds = rounds.sort_values("round")
    accuracy = rounds["accuracy"].to_numpy(dtype=float)
    weighted = rounds["accuracy_weighted"].to_numpy(dtype=float)
    numbers = rounds["round"].to_numpy()
    # a round nobody could be evaluated in (NaN) is left out of the means, not counted as 0
    reached = np.flatnonzero(accuracy >= target)  # NaN compares False
    best_round = best_val_test = math.nan
    val = rounds["val_accuracy"]
    if val.notna().any():  # older results have no validation split: no best round
        best = rounds.loc[val.idxmax()]  # skips NaN; the earliest round on a tie
        best_round, best_val_test = float(best["round"]), float(best["accuracy"])
    return {
        "final": float(accuracy[-1]),
        "last5": _finite_mean(accuracy[-LAST_ROUNDS:]),
        "auc": _finite_mean(accuracy),
        "round_to_target": float(numbers[reached[0]] if reached.size else numbers[-1] + 1),
        "reached_target": bool(reached.size),
        "best_val_test": best_val_test,
        "best_val_round": best_round,
        "final_weighted": float(weighted[-1]),
        "last5_weighted": _finite_mean(weighted[-LAST_ROUNDS:]),
    }


def run_measures(runs: pd.DataFrame, target: float = DEFAULT_TARGET) -> pd.DataFrame:
    """A row per run: run, setting, seed, rounds_done, partial_rounds, reuse and its measures."""
    rows = []
    for run, rounds in runs.groupby("run", sort=False):
        rows.append(
            {
                "run": run,
                "setting": rounds["setting"].iloc[0],
                "seed": rounds["seed"].iloc[0],
                "rounds_done": int(rounds["round"].max()),
                "partial_rounds": int(rounds["partial"].sum()),
                "reused_from": rounds["reused_from"].iloc[0] if "reused_from" in rounds else "",
                **measure_run(rounds, target),
            }
        )
    return pd.DataFrame(rows)


def reuse_text(reused_from: pd.Series) -> str:
    """`figure 2 (5 of 5 runs)` for a setting whose runs come from another table; else ``."""
    named = reused_from[reused_from.astype(bool)]
    return "; ".join(
        f"{name} ({count} of {len(reused_from)} runs)"
        for name, count in named.value_counts(sort=False).items()
    )


def summary_table(runs: pd.DataFrame, target: float = DEFAULT_TARGET) -> pd.DataFrame:
    """Per setting: seeds, rounds done, partial rounds, reuse, every measure as mean ± interval."""
    per_run = run_measures(runs, target)
    repeated = per_run[per_run.duplicated(["setting", "seed"], keep=False)]
    for run in repeated["run"]:
        # e.g. the same sweep plotted from two copies: each copy counts as one more seed
        log.warning("%s repeats the seed of another run of its setting: both count", run)
    rows = []
    for setting, group in per_run.groupby("setting", sort=False):
        row = {
            "setting": setting,
            "num_seeds": len(group),
            "seeds": sorted_seeds(group["seed"].tolist()),
            "rounds_done": int(group["rounds_done"].min()),
            "partial_rounds": int(group["partial_rounds"].sum()),
            "reused_from": reuse_text(group["reused_from"]),
            "target": target,
            "never_reached_target": int((~group["reached_target"]).sum()),
        }
        for measure in MEASURES:
            row.update(interval_columns(measure, mean_interval(group[measure])))
        rows.append(row)
    summary = settings_table(runs).merge(pd.DataFrame(rows), on="setting", sort=False)
    return summary.drop(columns="setting")


def accuracy_curves(runs: pd.DataFrame, column: str = "accuracy") -> pd.DataFrame:
    """Per setting and evaluated round over seeds: `column`'s statistics and partial seeds."""
    curves = (
        runs.dropna(subset=[column])
        .groupby(["setting", "round"], sort=False)
        .agg(
            mean=(column, "mean"),
            std=(column, "std"),
            min=(column, "min"),
            max=(column, "max"),
            num_seeds=(column, "count"),
            partial_seeds=("partial", "sum"),
        )
        .reset_index()
    )
    curves["half_width"] = [
        t_quantile(n) * std / math.sqrt(n) if n > 1 else math.nan
        for n, std in zip(curves["num_seeds"], curves["std"], strict=True)
    ]
    table = settings_table(runs).merge(curves, on="setting", how="inner", sort=False)
    return table.reset_index(drop=True)
