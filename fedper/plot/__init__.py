"""Figures and tables rebuilt from run folders or packed sweeps alone: `python -m fedper.plot`."""

# One module per concern: runs (reading results files and packed sweeps), pack (writing packed
# sweeps), display (names, styles and order from the registries), stats (per-run measures,
# confidence intervals, p-values, Holm), compare (paired per-seed differences), tables
# (Markdown and CSV), figures (PNG and PDF), cli (the command line).

from fedper.plot.cli import main
from fedper.plot.command import PlotOutput, plot_runs
from fedper.plot.compare import Comparison, paired_differences, parse_comparison
from fedper.plot.figures import build_figures, draw_figures
from fedper.plot.pack import pack_sweep
from fedper.plot.runs import PlotError, load_runs, read_packed, setting_from_config
from fedper.plot.stats import (
    Interval,
    accuracy_curves,
    holm,
    mean_interval,
    p_value,
    run_measures,
    summary_table,
)

__all__ = [
    "Comparison",
    "Interval",
    "PlotError",
    "PlotOutput",
    "accuracy_curves",
    "build_figures",
    "draw_figures",
    "holm",
    "load_runs",
    "main",
    "mean_interval",
    "p_value",
    "pack_sweep",
    "paired_differences",
    "parse_comparison",
    "plot_runs",
    "read_packed",
    "run_measures",
    "setting_from_config",
    "summary_table",
]
