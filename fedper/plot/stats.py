"""Statistics over seeds: per-run measures and their 95% confidence intervals."""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from fedper.plot.display import settings_table, sorted_seeds

log = logging.getLogger("fedper.plot")

CONFIDENCE = 0.95  # two-sided, Student t over seeds
LAST_ROUNDS = 5  # the level of a curve: the mean of its last rounds (all, if fewer)
PLATEAU_SHARE = 0.95  # speed: the first round reaching this share of the level
# Per-run measures, each summarized over seeds as mean ± half-width:
#   final          test accuracy in the last recorded round
#   last5          mean test accuracy over the last LAST_ROUNDS rounds
#   best_val_test  test accuracy in the round with the highest validation accuracy
#   round_to_95    first round whose test accuracy reaches PLATEAU_SHARE of last5
MEASURES = ("final", "last5", "best_val_test", "round_to_95")
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


def mean_interval(values: Iterable[float]) -> Interval:
    """Mean and Student-t interval of the finite values; one value has a mean but no interval."""
    # half-width t(0.975, n-1) * s / sqrt(n), s the sample std (ddof=1)
    data = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=float)
    if data.size == 0:
        return Interval(math.nan, math.nan, 0)
    mean = float(data.mean())
    if data.size == 1:
        return Interval(mean, math.nan, 1)
    half_width = t_quantile(data.size) * float(data.std(ddof=1)) / math.sqrt(data.size)
    return Interval(mean, half_width, int(data.size))


def interval_columns(prefix: str, interval: Interval) -> dict[str, float | int]:
    """`<prefix>_mean`, `_half_width`, `_ci_low`, `_ci_high`, `_n`: the CSV's numbers."""
    values = (interval.mean, interval.half_width, interval.low, interval.high, interval.n)
    return {
        f"{prefix}_{field}": value for field, value in zip(INTERVAL_FIELDS, values, strict=True)
    }


def _finite_mean(values: np.ndarray) -> float:
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if finite.size else math.nan


def measure_run(rounds: pd.DataFrame) -> dict[str, float]:
    """One run's measures from its rows of the runs table (see MEASURES)."""
    rounds = rounds.sort_values("round")
    accuracy = rounds["accuracy"].to_numpy(dtype=float)
    # a round nobody could be evaluated in (NaN) is left out of the level, not counted as 0
    plateau = _finite_mean(accuracy[-LAST_ROUNDS:])
    reached = np.flatnonzero(accuracy >= PLATEAU_SHARE * plateau)  # NaN compares False
    best_round = best_val_test = math.nan
    val = rounds["val_accuracy"]
    if val.notna().any():  # older results have no validation split: no best round
        best = rounds.loc[val.idxmax()]  # skips NaN; the earliest round on a tie
        best_round, best_val_test = float(best["round"]), float(best["accuracy"])
    return {
        "final": float(accuracy[-1]),
        "last5": plateau,
        "best_val_test": best_val_test,
        "best_val_round": best_round,
        "round_to_95": float(rounds["round"].iloc[reached[0]]) if reached.size else math.nan,
    }


def run_measures(runs: pd.DataFrame) -> pd.DataFrame:
    """A row per run: run, setting, seed, rounds_done, partial_rounds and its measures."""
    rows = []
    for run, rounds in runs.groupby("run", sort=False):
        rows.append(
            {
                "run": run,
                "setting": rounds["setting"].iloc[0],
                "seed": rounds["seed"].iloc[0],
                "rounds_done": int(rounds["round"].max()),
                "partial_rounds": int(rounds["partial"].sum()),
                **measure_run(rounds),
            }
        )
    return pd.DataFrame(rows)


def summary_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Per setting: seeds, rounds done, partial rounds, and every measure as mean ± interval."""
    per_run = run_measures(runs)
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
        }
        for measure in MEASURES:
            row.update(interval_columns(measure, mean_interval(group[measure])))
        rows.append(row)
    summary = settings_table(runs).merge(pd.DataFrame(rows), on="setting", sort=False)
    return summary.drop(columns="setting")


def accuracy_curves(runs: pd.DataFrame) -> pd.DataFrame:
    """Per setting and round over seeds: accuracy statistics and how many seeds were partial."""
    curves = (
        runs.groupby(["setting", "round"], sort=False)
        .agg(
            mean=("accuracy", "mean"),
            std=("accuracy", "std"),
            min=("accuracy", "min"),
            max=("accuracy", "max"),
            num_seeds=("accuracy", "count"),
            partial_seeds=("partial", "sum"),
        )
        .reset_index()
    )
    curves["half_width"] = [
        t_quantile(n) * std / math.sqrt(n) if n > 1 else math.nan
        for n, std in zip(curves["num_seeds"], curves["std"], strict=True)
    ]
    table = settings_table(runs).merge(curves, on="setting", how="left", sort=False)
    return table.reset_index(drop=True)
