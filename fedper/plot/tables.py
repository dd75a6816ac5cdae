"""The summary and paired-difference tables as Markdown (rounded) and CSV (full precision)."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from fedper.plot.display import COLUMN_TITLES, cell, is_missing, seeds_cell, text
from fedper.plot.stats import INTERVAL_FIELDS, LAST_ROUNDS, MEASURES, PLATEAU_SHARE
from fedper.state import write_text_atomic

MEASURE_TITLES = {
    "final": "final round",
    "last5": f"last {LAST_ROUNDS} rounds",
    "best_val_test": "test at best val round",
    "round_to_95": f"round to {PLATEAU_SHARE:.0%}",
}
SUMMARY_NUMBERS = ("num_seeds", "seeds", "rounds_done", "partial_rounds") + tuple(
    f"{m}_{f}" for m in MEASURES for f in INTERVAL_FIELDS
)
SUMMARY_NOTE = (
    "Accuracy: unweighted mean over clients of each client's personalized test accuracy. "
    "Each cell is the mean over seeds ± the half-width of its 95% confidence interval "
    "(Student t with n-1 degrees of freedom, sample std); a value without ± comes from one "
    "seed, and (n=k) says a measure had fewer seeds than the row. "
    f"final round: the last round. last {LAST_ROUNDS} rounds: the mean over each run's last "
    f"{LAST_ROUNDS} rounds (its plateau). test at best val round: the test accuracy of the round "
    "with the highest validation accuracy (– without a validation split). "
    f"round to {PLATEAU_SHARE:.0%}: the first round reaching {PLATEAU_SHARE:.0%} of the "
    "run's plateau. partial rounds: rounds, summed over seeds, that went on with fewer clients "
    "than asked."
)
DIFFERENCE_NOTE = (
    "Paired by seed (only seeds both settings ran): other minus reference, mean ± half-width "
    "of the 95% confidence interval of the per-seed differences (Student t, n-1 degrees of "
    "freedom). Resolved when the interval excludes 0; not resolved otherwise. Each interval "
    "holds for its own comparison: where there is no true difference, about 1 comparison "
    "in 20 is still called resolved by chance."
)


def interval_cell(row: pd.Series, measure: str, digits: int = 3, signed: bool = False) -> str:
    """`0.884 ± 0.052`, `0.884` (one seed) or `–`, with `(n=k)` below the row's seeds."""
    mean, half_width = row[f"{measure}_mean"], row[f"{measure}_half_width"]
    if is_missing(mean):
        return "–"
    sign = "+" if signed else ""
    shown = f"{mean:{sign}.{digits}f}"
    if not is_missing(half_width):
        shown += f" ± {half_width:.{digits}f}"
    count = row.get(f"{measure}_n")
    if "num_seeds" in row and count is not None and 0 < count < row["num_seeds"]:
        shown += f" (n={count})"
    return shown


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(cells) + " |" for cells in rows]


def summary_markdown(summary: pd.DataFrame, split: str = "test") -> str:
    """The summary table as Markdown: a row per setting, each measure as mean ± 95% CI.

    With `split="validation"` the accuracies are validation accuracies (`--metric val`).
    """
    keys = [c for c in summary.columns if c not in SUMMARY_NUMBERS]
    header = [COLUMN_TITLES.get(k, k) for k in keys] + ["seeds"]
    titles = MEASURE_TITLES if split == "test" else {**MEASURE_TITLES, "best_val_test": "best val"}
    header += [titles[m] for m in MEASURES] + ["partial rounds"]
    # an interrupted sweep: say how far its shortest run got
    unfinished = "num_rounds" in summary and (summary["rounds_done"] < summary["num_rounds"]).any()
    if unfinished:
        header.append("rounds done")
    rows = []
    for _, row in summary.iterrows():
        cells = [cell(k, row[k]) for k in keys] + [seeds_cell(row["seeds"])]
        cells += [interval_cell(row, m, 1 if m == "round_to_95" else 3) for m in MEASURES]
        cells.append(text(row["partial_rounds"]))
        if unfinished:
            cells.append(text(row["rounds_done"]))
        rows.append(cells)
    note = SUMMARY_NOTE
    if split != "test":
        note = f"These are {split} accuracies (chosen on, never test data). " + note.replace(
            "personalized test accuracy", f"personalized {split} accuracy"
        )
    return "\n".join(_table(header, rows)) + "\n\n" + note + "\n"


def _per_seed(seeds: str, differences: str) -> str:
    pairs = zip(seeds.split(), differences.split(), strict=True)
    return ", ".join(f"{seed}: {float(d):+.3f}" for seed, d in pairs)


def _ci(row: pd.Series) -> str:
    low, high = row["difference_ci_low"], row["difference_ci_high"]
    return "–" if math.isnan(low) else f"[{low:+.3f}, {high:+.3f}]"


def differences_markdown(differences: pd.DataFrame) -> str:
    """A section per `--compare`: a row per pair of settings and measure, with its verdict."""
    sections = []
    for name, rows in differences.groupby("compare", sort=False):
        key = rows["key"].iloc[0]
        columns = list(rows.columns)
        context = [c for c in columns[1 : columns.index("key")] if c != key]
        header = [COLUMN_TITLES.get(k, k) for k in context]
        header += ["comparison", "measure", "difference", "95% CI", "n", "per seed", "verdict"]
        cells = [
            [cell(k, row[k]) for k in context]
            + [
                row["comparison"],
                MEASURE_TITLES[row["measure"]],
                interval_cell(row, "difference", signed=True),
                _ci(row),
                text(row["difference_n"]),
                _per_seed(row["seeds"], row["differences"]) or "–",
                row["verdict"],
            ]
            for _, row in rows.iterrows()
        ]
        title = f"### Paired differences against {name} (settings equal on every key but {key})"
        sections.append("\n".join([title, "", *_table(header, cells)]))
    return "\n\n".join(sections) + "\n\n" + DIFFERENCE_NOTE + "\n"


def write_table(table: pd.DataFrame, markdown: str, out_dir: str | Path, stem: str) -> list[Path]:
    """`<stem>.csv` (full precision) and `<stem>.md` (rounded) in out_dir."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    csv_path, md_path = out_dir / f"{stem}.csv", out_dir / f"{stem}.md"
    write_text_atomic(csv_path, table.to_csv(index=False))
    write_text_atomic(md_path, markdown)
    return [csv_path, md_path]
