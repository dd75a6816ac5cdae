"""`python -m fedper.plot`: figures, the summary table and paired differences from results files."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from fedper.plot.compare import paired_differences, parse_comparison
from fedper.plot.figures import BANDS, draw_figures
from fedper.plot.runs import PlotError, load_runs
from fedper.plot.stats import accuracy_curves, summary_table
from fedper.plot.tables import differences_markdown, summary_markdown, write_table


@dataclass
class PlotOutput:
    """What plot_runs computed and wrote."""

    summary: pd.DataFrame
    differences: pd.DataFrame | None
    pngs: list[Path]
    tables: list[Path] = field(default_factory=list)


def plot_runs(
    folders: Iterable[str | Path],
    out_dir: str | Path,
    figure: str | None = None,
    band: str = "minmax",
    compare: Sequence[str] = (),
    metric: str = "test",
) -> PlotOutput:
    """Figures, summary and (with `compare`) paired differences for every results.json below."""
    # With `figure`, files are `<figure>_<model>.png`, `<figure>_summary.{csv,md}` and
    # `<figure>_differences.{csv,md}`, so several figures can share one output folder;
    # without, `accuracy_<dataset>_<model>.png`, `summary.*` and `differences.*`.
    comparisons = [parse_comparison(spec) for spec in compare]  # a typo fails before drawing
    runs = load_runs(folders, metric)
    # tables on validation data get their own names, so they never overwrite the test ones
    prefix = (f"{figure}_" if figure else "") + ("val_" if metric == "val" else "")
    differences = paired_differences(runs, comparisons) if comparisons else None
    split = "test" if metric == "test" else "validation"
    stem = figure if metric == "test" else f"{figure or 'accuracy'}_val"
    pngs = draw_figures(accuracy_curves(runs), out_dir, stem, band, split)
    summary = summary_table(runs)
    tables = write_table(summary, summary_markdown(summary, split), out_dir, f"{prefix}summary")
    if differences is not None and len(differences):
        markdown = differences_markdown(differences)
        tables += write_table(differences, markdown, out_dir, f"{prefix}differences")
    return PlotOutput(summary, differences, pngs, tables)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: exit 0 with figures written, 2 with a one-line error."""
    parser = argparse.ArgumentParser(
        prog="python -m fedper.plot",
        description="Accuracy-per-round figures, a summary table (mean ± 95% CI over seeds) "
        "and paired per-seed differences from results.json files (searched recursively below "
        "each folder).",
    )
    parser.add_argument("folders", nargs="+", type=Path, help="run or multirun folders")
    parser.add_argument("--out", type=Path, help="output folder (default: the first folder)")
    parser.add_argument(
        "--figure",
        help="name stem of the PNGs and tables, e.g. figure2 -> figure2_mobile.png "
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
        "--metric",
        choices=("test", "val"),
        default="test",
        help="accuracy on the clients' test splits (default) or validation splits (to choose "
        "settings on: the tables and figures are then computed on validation data only)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(format="fedper.plot: warning: %(message)s", level=logging.WARNING)
    out_dir = args.out or (args.folders[0] if args.folders[0].is_dir() else args.folders[0].parent)
    try:
        output = plot_runs(args.folders, out_dir, args.figure, args.band, args.compare, args.metric)
    except PlotError as error:
        print(f"fedper.plot: error: {error}", file=sys.stderr)
        return 2
    print(
        summary_markdown(output.summary, "test" if args.metric == "test" else "validation"), end=""
    )
    if output.differences is not None and len(output.differences):
        print("\n" + differences_markdown(output.differences), end="")
    for path in [*output.pngs, *output.tables]:
        print(f"wrote {path}")
    return 0
