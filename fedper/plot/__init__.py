"""Figures and tables rebuilt from results.json files alone: `python -m fedper.plot`."""

# One module per concern: runs (reading results files), display (names, styles and order from
# the registries), stats (per-run measures and confidence intervals), compare (paired per-seed
# differences), tables (Markdown and CSV), figures (PNGs), cli (the command line).

from fedper.plot.cli import PlotOutput, main, plot_runs
from fedper.plot.compare import Comparison, paired_differences, parse_comparison
from fedper.plot.figures import build_figures, draw_figures
from fedper.plot.runs import PlotError, load_runs, setting_from_config
from fedper.plot.stats import Interval, accuracy_curves, mean_interval, run_measures, summary_table

__all__ = [
    "Comparison",
    "Interval",
    "PlotError",
    "PlotOutput",
    "accuracy_curves",
    "build_figures",
    "draw_figures",
    "load_runs",
    "main",
    "mean_interval",
    "paired_differences",
    "parse_comparison",
    "plot_runs",
    "run_measures",
    "setting_from_config",
    "summary_table",
]
