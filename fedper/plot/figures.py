"""Accuracy-per-round figures: a PNG per dataset and model, a panel per classes per client."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from fedper.plot.display import algorithm_style, format_value, head_count_matters, is_missing
from fedper.plot.runs import PlotError

CURVE_COLUMNS = ("mean", "std", "min", "max", "num_seeds", "partial_seeds", "half_width")
BANDS = ("minmax", "std", "ci", "none")
BAND_TEXT = {"minmax": ", band: min to max", "std": ", band: ± std", "ci": ", band: 95% CI"}
PANEL_KEY = "dataset.num_classes"  # a panel per value, as the paper's figure 2 has
PARTIAL_MARKER = "X"  # a round that went on with fewer clients than asked, in any seed
PARTIAL_LABEL = "partial round (fewer clients)"


def line_labels(settings: pd.DataFrame, keys: list[str]) -> list[str]:
    """Legend labels that name only what differs between the lines of one panel."""
    varying = [k for k in keys if settings[k].astype(str).nunique(dropna=False) > 1]

    def label(row: pd.Series, drop_heads: bool) -> str:
        parts = [
            format_value(key, row[key])
            for key in varying
            if not (
                drop_heads
                and key == "model.num_head_layers"
                and not head_count_matters(row.get("algorithm"))
            )
        ]
        return ", ".join(parts) or format_value("algorithm", row.get("algorithm"))

    labels = [label(row, drop_heads=True) for _, row in settings.iterrows()]
    if len(set(labels)) < len(labels):  # e.g. FedAvg run at two head counts: keep them apart
        labels = [label(row, drop_heads=False) for _, row in settings.iterrows()]
    return labels


def png_name(figure: str | None, dataset: str, model: str, many_datasets: bool) -> str:
    if figure is None:
        return f"accuracy_{dataset}_{model}.png"
    return f"{figure}_{dataset}_{model}.png" if many_datasets else f"{figure}_{model}.png"


def _count_text(low: int, high: int, noun: str) -> str:
    """`3 seeds`, `1 seed`, or `1-3 seeds` when some rounds have fewer seeds than others."""
    if low == high:
        return f"{low} {noun}{'' if low == 1 else 's'}"
    return f"{low}-{high} {noun}s"


def _band(curve: pd.DataFrame, band: str) -> tuple[pd.Series, pd.Series] | None:
    """Lower and upper edge; NaN (no band) where a single seed gives no spread."""
    if band == "minmax":
        return curve["min"], curve["max"]
    if band == "std":
        return curve["mean"] - curve["std"], curve["mean"] + curve["std"]
    if band == "ci":
        return curve["mean"] - curve["half_width"], curve["mean"] + curve["half_width"]
    return None


def _draw_panel(
    ax: Axes, curves: pd.DataFrame, panel: pd.DataFrame, labels: list[str], band: str
) -> None:
    """A line per setting of the panel, its band, and a marker on each partial round."""
    any_partial = False
    for index, (label, (_, setting)) in enumerate(zip(labels, panel.iterrows(), strict=True)):
        curve = curves[curves["setting"] == setting["setting"]].sort_values("round")
        color = f"C{index % 10}"
        style = algorithm_style(setting.get("algorithm"))
        ax.plot(
            curve["round"],
            curve["mean"],
            linestyle=style,
            color=color,
            marker="o",
            ms=2.5,
            lw=1.5,
            label=label,
        )
        limits = _band(curve, band)
        if limits is not None:
            ax.fill_between(curve["round"], *limits, color=color, alpha=0.15, lw=0)
        partial = curve[curve["partial_seeds"] > 0]
        if len(partial):
            any_partial = True
            ax.plot(
                partial["round"],
                partial["mean"],
                PARTIAL_MARKER,
                color=color,
                ms=8,
                mec="black",
                mew=0.8,
                ls="none",
                label="_partial",
            )
    if any_partial:  # one legend entry for every line's markers
        ax.plot(
            [], [], PARTIAL_MARKER, color="white", mec="black", ms=8, ls="none", label=PARTIAL_LABEL
        )


def build_figures(
    curves: pd.DataFrame, figure: str | None = None, band: str = "minmax", split: str = "test"
) -> list[tuple[str, Figure]]:
    """(file name, Figure) per dataset and model: a panel per classes-per-client value."""
    if band not in BANDS:
        raise PlotError(f"band={band} is unknown: use one of {', '.join(BANDS)}")
    keys = [c for c in curves.columns if c not in ("setting", "round", *CURVE_COLUMNS)]
    settings = curves.drop_duplicates("setting")[["setting", *keys]]
    many_datasets = settings["dataset.name"].nunique() > 1
    label_keys = [k for k in keys if k not in ("dataset.name", "model_name", PANEL_KEY)]
    built = []
    for (dataset, model), group in settings.groupby(["dataset.name", "model_name"], sort=False):
        if PANEL_KEY in group and group[PANEL_KEY].astype(str).nunique() > 1:
            panels = list(group.groupby(PANEL_KEY, sort=True))
        elif PANEL_KEY in group:
            panels = [(group[PANEL_KEY].iloc[0], group)]
        else:
            panels = [(None, group)]
        fig = Figure(figsize=(4.6 * len(panels), 3.9))
        FigureCanvasAgg(fig)  # attaches the Agg canvas: no pyplot, no global backend state
        axes = fig.subplots(1, len(panels), squeeze=False)[0]
        for ax, (panel_value, panel) in zip(axes, panels, strict=True):
            _draw_panel(ax, curves, panel, line_labels(panel, label_keys), band)
            title = f"{format_value('model_name', model)} · {format_value('dataset.name', dataset)}"
            if not is_missing(panel_value):
                title += f" · {format_value(PANEL_KEY, panel_value)}"
            ax.set_title(title, fontsize=10)
            ax.set(xlabel="round", ylabel=f"personalized {split} accuracy", ylim=(0, 1))
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.grid(alpha=0.3)
            ax.legend(loc="lower right", fontsize=8)
        seeds = curves[curves["setting"].isin(group["setting"])]["num_seeds"]
        seed_text = _count_text(seeds.min(), seeds.max(), "seed")
        fig.suptitle(
            f"{figure or 'accuracy'}: mean over {seed_text}{BAND_TEXT.get(band, '')}", fontsize=10
        )
        fig.tight_layout()
        built.append((png_name(figure, str(dataset), str(model), many_datasets), fig))
    return built


def draw_figures(
    curves: pd.DataFrame,
    out_dir: str | Path,
    figure: str | None = None,
    band: str = "minmax",
    split: str = "test",
) -> list[Path]:
    """Write build_figures' PNGs into out_dir; their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, fig in build_figures(curves, figure, band, split):
        path = out_dir / name
        fig.savefig(path, dpi=120)
        paths.append(path)
    return paths
