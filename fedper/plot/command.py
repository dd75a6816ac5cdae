"""The plot command: its arguments, and the figures and tables it makes from runs."""

from __future__ import annotations

import argparse
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from fedper.plot.compare import paired_differences, parse_comparison
from fedper.plot.figures import BANDS, draw_figures
from fedper.plot.runs import PlotError, iter_runs, load_runs
from fedper.plot.stats import DEFAULT_TARGET, summary_table
from fedper.plot.tables import differences_markdown, summary_markdown, write_table


@dataclass
class PlotOutput:
    """What plot_runs computed and wrote."""

    summary: pd.DataFrame
    differences: pd.DataFrame | None
    figures: list[Path]
    tables: list[Path] = field(default_factory=list)


def reused_runs(specs: Iterable[str]) -> dict[str, str]:
    """run_id -> name for every `[NAME=]SOURCE` of --reused-from (NAME defaults to SOURCE)."""
    found = {}
    for spec in specs:
        name, sep, source = spec.rpartition("=")
        name = name if sep and name else source
        for _, run in iter_runs([source]):
            found.setdefault(run.get("run_id"), name)
    found.pop(None, None)
    return found


def plot_runs(
    sources: Iterable[str | Path],
    out_dir: str | Path,
    figure: str | None = None,
    band: str = "minmax",
    compare: Sequence[str] = (),
    metric: str = "test",
    target: float = DEFAULT_TARGET,
    reused_from: Sequence[str] = (),
    figures: bool = True,
    tuned: Sequence[str] = (),
) -> PlotOutput:
    """Figures, summary and (with `compare`) paired differences for every run of the sources."""
    # With `figure`, files are `<figure>_<model>.{png,pdf}`, `<figure>_summary.{csv,md}` and
    # `<figure>_differences.{csv,md}`, so several figures can share one output folder;
    # without, `accuracy_<dataset>_<model>.*`, `summary.*` and `differences.*`.
    comparisons = [parse_comparison(spec, tuned) for spec in compare]  # a typo fails before drawing
    if not 0 < target <= 1:
        raise PlotError(f"--target {target}: give an accuracy between 0 and 1, e.g. 0.9")
    runs = load_runs(sources, metric)
    reused = reused_runs(reused_from)
    runs["reused_from"] = [reused.get(run_id, "") for run_id in runs["run_id"]]
    # tables on validation data get their own names, so they never overwrite the test ones
    prefix = (f"{figure}_" if figure else "") + ("val_" if metric == "val" else "")
    split = "test" if metric == "test" else "validation"
    differences = paired_differences(runs, comparisons, target) if comparisons else None
    stem = figure if metric == "test" else f"{figure or 'accuracy'}_val"
    drawn = draw_figures(runs, out_dir, stem, band, split) if figures else []
    summary = summary_table(runs, target)
    tables = write_table(summary, summary_markdown(summary, split), out_dir, f"{prefix}summary")
    if differences is not None and len(differences):
        markdown = differences_markdown(differences, split)
        tables += write_table(differences, markdown, out_dir, f"{prefix}differences")
    return PlotOutput(summary, differences, drawn, tables)


def plot_parser() -> argparse.ArgumentParser:
    """The arguments of `python -m fedper.plot <sources> ...`."""
    parser = argparse.ArgumentParser(
        prog="python -m fedper.plot",
        description="Accuracy-per-round figures, a summary table (mean ± 95% CI over seeds) "
        "and paired per-seed differences (Holm-adjusted) from results.json files (searched "
        "recursively below each folder) or packed sweep files. "
        "`python -m fedper.plot pack --help`: pack a sweep folder into one file.",
    )
    parser.add_argument(
        "folders", nargs="+", type=Path, help="run or multirun folders, or packed *.jsonl.gz files"
    )
    parser.add_argument("--out", type=Path, help="output folder (default: the first folder)")
    parser.add_argument(
        "--figure",
        help="name stem of the figures and tables, e.g. figure2 -> figure2_mobile.png "
        "(default: accuracy_<dataset>_<model>.png and summary.csv)",
    )
    parser.add_argument(
        "--band", choices=BANDS, default="minmax", help="shaded band around each mean curve"
    )
    parser.add_argument(
        "--compare",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="paired per-seed differences against the setting with KEY=VALUE, within each "
        "group of settings equal on every other key (repeatable), e.g. algorithm=fedper",
    )
    parser.add_argument(
        "--tuned",
        action="append",
        default=[],
        metavar="KEY",
        help="a key each setting was tuned on (repeatable): the two sides of a comparison may "
        "differ in it, so each algorithm's chosen setting is compared with the reference's, "
        "e.g. --tuned model.num_head_layers --tuned finetune_epochs",
    )
    parser.add_argument(
        "--metric",
        choices=("test", "val"),
        default="test",
        help="accuracy on the clients' test splits (default) or validation splits (to choose "
        "settings on: the tables and figures are then computed on validation data only)",
    )
    parser.add_argument(
        "--target",
        type=float,
        default=DEFAULT_TARGET,
        help="speed: the first round reaching this accuracy, the same for every setting "
        f"(default {DEFAULT_TARGET})",
    )
    parser.add_argument(
        "--reused-from",
        action="append",
        default=[],
        metavar="[NAME=]SOURCE",
        help="runs that are also in SOURCE (same run id) are named as reused from NAME in the "
        "tables (repeatable), e.g. 'figure 2=docs/results/quick/figure2_runs.jsonl.gz'",
    )
    return parser
