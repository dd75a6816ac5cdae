"""The summary and paired-difference tables as Markdown (rounded) and CSV (full precision)."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from fedper.atomic import write_text_atomic
from fedper.plot.compare import PAIRED_MEASURES
from fedper.plot.display import COLUMN_TITLES, cell, is_missing, seeds_cell, text
from fedper.plot.stats import ALPHA, INTERVAL_FIELDS, LAST_ROUNDS, MEASURES

SUMMARY_NUMBERS = (
    "num_seeds", "seeds", "rounds_done", "partial_rounds", "reused_from", "target",
    "never_reached_target",
) + tuple(f"{m}_{f}" for m in MEASURES for f in INTERVAL_FIELDS)  # fmt: skip
WEIGHTED = "example-weighted"


def measure_titles(target: float, split: str = "test") -> dict[str, str]:
    """Each measure's column or section title."""
    return {
        "final": "final round",
        "last5": f"last {LAST_ROUNDS} rounds",
        "auc": "mean over rounds",
        "round_to_target": f"round to {target:.2f}",
        "best_val_test": "test at best val round" if split == "test" else "best val",
        "final_weighted": f"final round, {WEIGHTED}",
        "last5_weighted": f"last {LAST_ROUNDS} rounds, {WEIGHTED}",
    }


def measures_note(target: float, split: str) -> str:
    """What each measure is, for the notes under both tables."""
    return (
        f"Accuracy: the unweighted mean over clients of each client's personalized {split} "
        f"accuracy (the paper's); {WEIGHTED}: the mean over clients weighted by their {split} "
        "examples. Only evaluated rounds count. final round: the last evaluated round. "
        f"last {LAST_ROUNDS} rounds: the mean over a run's last {LAST_ROUNDS} evaluated rounds "
        "(its plateau). mean over rounds: the mean over all its evaluated rounds, the area "
        "under its accuracy curve per round (higher is faster and better). "
        f"round to {target:.2f}: the first round whose accuracy reaches {target:.2f}, the same "
        "target for every setting; a run that never reaches it counts as its last round + 1, "
        "a bound in its favour, and `(k never)` says how many runs did so."
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


def _digits(measure: str) -> int:
    return 1 if measure == "round_to_target" else 3


def _never(row: pd.Series) -> str:
    never = row.get("never_reached_target", 0)
    return f" ({int(never)} never)" if never else ""


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(cells) + " |" for cells in rows]


def summary_markdown(summary: pd.DataFrame, split: str = "test") -> str:
    """The summary table as Markdown: a row per setting, each measure as mean ± 95% CI.

    With `split="validation"` the accuracies are validation accuracies (`--metric val`).
    """
    target = float(summary["target"].iloc[0])
    titles = measure_titles(target, split)
    keys = [c for c in summary.columns if c not in SUMMARY_NUMBERS]
    header = [COLUMN_TITLES.get(k, k) for k in keys] + ["seeds"]
    header += [titles[m] for m in MEASURES] + ["partial rounds"]
    # an interrupted sweep: say how far its shortest run got
    unfinished = bool(
        "num_rounds" in summary and (summary["rounds_done"] < summary["num_rounds"]).any()
    )
    reused = bool(summary["reused_from"].astype(bool).any())
    header += ["last evaluated round"] * unfinished + ["runs reused from"] * reused
    rows = []
    for _, row in summary.iterrows():
        cells = [cell(k, row[k]) for k in keys] + [seeds_cell(row["seeds"])]
        for measure in MEASURES:
            shown = interval_cell(row, measure, _digits(measure))
            cells.append(shown + (_never(row) if measure == "round_to_target" else ""))
        cells.append(text(row["partial_rounds"]))
        cells += [text(row["rounds_done"])] * unfinished + [row["reused_from"] or "–"] * reused
        rows.append(cells)
    note = (
        "Each cell is the mean over seeds ± the half-width of its 95% confidence interval "
        "(Student t with n-1 degrees of freedom, sample std); a value without ± comes from "
        "one seed, and (n=k) says a measure had fewer seeds than the row. "
        + measures_note(target, split)
        + " test at best val round: the test accuracy of the round with the highest "
        "validation accuracy (– without a validation split). partial rounds: rounds, summed "
        "over seeds, that went on with fewer clients than asked."
    )
    if reused:
        note += " runs reused from: the runs of that row are the same runs (same run ids) as in the table named, not new ones."  # fmt: skip
    if split != "test":
        note = f"These are {split} accuracies (chosen on, never test data). " + note
    return "\n".join(_table(header, rows)) + "\n\n" + note + "\n"


def _per_seed(row: pd.Series) -> str:
    pairs = zip(row["seeds"].split(), row["differences"].split(), strict=True)
    digits = _digits(row["measure"])
    return ", ".join(f"{seed}: {float(d):+.{digits}f}" for seed, d in pairs) or "–"


def _ci(row: pd.Series, digits: int) -> str:
    low, high = row["difference_ci_low"], row["difference_ci_high"]
    return "–" if math.isnan(low) else f"[{low:+.{digits}f}, {high:+.{digits}f}]"


def _p(value: float) -> str:
    return "–" if math.isnan(value) else ("<0.001" if value < 0.001 else f"{value:.3f}")


def _shared_context(differences: pd.DataFrame) -> tuple[list[str], str]:
    """The context columns that vary between rows, and a sentence naming those that do not."""
    columns = list(differences.columns)
    context = columns[1 : columns.index("key")]
    varying, same = [], []
    for key in context:
        values = differences[key]
        if values.isna().all():
            continue  # the compared key of every row: the comparison column says it
        if values.isna().any() or values.astype(str).nunique() > 1:
            varying.append(key)
        else:
            same.append(f"{COLUMN_TITLES.get(key, key)} {cell(key, values.iloc[0])}")
    return varying, ("Every row: " + ", ".join(same) + "." if same else "")


def differences_markdown(differences: pd.DataFrame, split: str = "test") -> str:
    """A section per measure (one Holm family each): a row per pair of settings."""
    target = float(differences["target"].iloc[0])
    titles = measure_titles(target, split)
    context, shared = _shared_context(differences)
    reused = bool(differences["reused_from"].astype(bool).any())
    header = [COLUMN_TITLES.get(k, k) for k in context] + ["comparison", "difference"]
    header += ["95% CI", "n", "per seed", "p", "verdict", "Holm p", "Holm verdict"]
    header += ["runs reused from"] * reused
    sections = [shared] if shared else []
    for measure in PAIRED_MEASURES:
        rows = differences[differences["measure"] == measure]
        if not len(rows):
            continue
        digits = _digits(measure)
        cells = [
            [cell(k, row[k]) for k in context]
            + [
                row["comparison"],
                interval_cell(row, "difference", digits, signed=True) + _never(row),
            ]  # fmt: skip
            + [_ci(row, digits), text(row["difference_n"]), _per_seed(row), _p(row["p_value"])]
            + [row["verdict"], _p(row["p_holm"]), row["verdict_holm"]]
            + [row["reused_from"] or "–"] * reused
            for _, row in rows.iterrows()
        ]
        size = int(rows["family_size"].iloc[0])
        title = f"### {titles[measure]} (a family of {size} comparison{'s' * (size != 1)}, Holm-adjusted)"  # fmt: skip
        sections.append("\n".join([title, "", *_table(header, cells)]))
    note = differences_note(target, split)
    if reused:
        note += " runs reused from: a side of that comparison is made of the same runs (same run ids) as the table named, not new ones."  # fmt: skip
    return "\n\n".join(sections) + "\n\n" + note + "\n"


def differences_note(target: float, split: str) -> str:
    """How the differences, intervals, p-values and both verdicts are computed."""
    return (
        "Paired by seed (only seeds both settings ran): other minus reference, mean ± "
        "half-width of the 95% confidence interval of the per-seed differences (Student t, "
        "n-1 degrees of freedom); p: the two-sided p-value of the same paired t-test. "
        "verdict: resolved when the interval excludes 0 (p < 0.05), for that comparison "
        "alone. Holm verdict: the family is every comparison in this table at one measure "
        "(each section, across every --compare); Holm's step-down method adjusts the p-values "
        f"(Holm p) and a difference is resolved when its Holm p < {ALPHA:.2f}, so the chance "
        "that any difference of the family is called resolved when none is real stays below "
        "0.05. For round to target, fewer rounds is ahead. " + measures_note(target, split)
    )


def write_table(table: pd.DataFrame, markdown: str, out_dir: str | Path, stem: str) -> list[Path]:
    """`<stem>.csv` (full precision) and `<stem>.md` (rounded) in out_dir."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    csv_path, md_path = out_dir / f"{stem}.csv", out_dir / f"{stem}.md"
    write_text_atomic(csv_path, table.to_csv(index=False))
    write_text_atomic(md_path, markdown)
    return [csv_path, md_path]
