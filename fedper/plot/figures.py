"""Accuracy-per-round figures: per dataset and model, a panel per data split, test above validation.

Each figure is written as a 300 dpi PNG and a PDF. Lines are the settings that differ in
anything but the data split (algorithm, head layers, hyperparameters), with the same colour
and line style in every panel; the legend sits in a column of its own beside the panels,
titled with what the lines and bands are.
"""

from __future__ import annotations

import io
import math
import numbers
from pathlib import Path

import pandas as pd
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator
from PIL import Image

from fedper.algorithms import ALGORITHMS
from fedper.atomic import write_atomic
from fedper.plot.display import (
    NAMING_KEYS,
    algorithm_style,
    dataset_label,
    describe,
    head_count_matters,
    is_missing,
    model_label,
    setting_columns,
    settings_table,
)
from fedper.plot.runs import PlotError
from fedper.plot.stats import accuracy_curves

BANDS = ("minmax", "std", "ci", "none")
BAND_TEXT = {"minmax": "min to max over seeds", "std": "± 1 std over seeds", "ci": "95% CI of the mean"}  # fmt: skip
# keys that say how the data is split among clients: a panel per value (the paper's figure 2
# has a panel per classes-per-client value)
PANEL_KEYS = ("dataset.num_classes", "num_clients", "clients_per_round", "min_successful_clients")  # fmt: skip
# panels in reading order: the paper's split first, then no shift before the shifts
PANEL_ORDER = {"partition.name": ("pathological", "dirichlet"), "shift.name": ("none", "feature", "concept")}  # fmt: skip
PARTIAL_MARKER = "X"  # a round that went on with fewer clients than asked, in any seed
PARTIAL_LABEL = "partial round (fewer clients)"
DPI = 300
MAX_COLUMNS = 3
PANEL_SIZE = (3.5, 2.7)  # inches per panel: three panels and the legend fill a 16:9 slide
LEGEND_LINE = 0.25  # inches per legend entry at the legend's font size
LEGEND_CHAR = 0.09  # inches per character of a legend label at the legend's font size
FONT = {"title": 13, "label": 12, "tick": 11, "legend": 11, "suptitle": 15}


def is_panel_key(key: str) -> bool:
    return key in PANEL_KEYS or key.startswith(("partition.", "shift."))


# settings read only by algorithms with this registry flag: another algorithm's line does not
# name them
USED_ONLY_WITH = {"fedrep.head_epochs": "head_then_base", "finetune_epochs": "finetune_head"}


def setting_used(key: str, algorithm: object) -> bool:
    """Whether the algorithm reads the setting (unknown algorithms: yes)."""
    entry = ALGORITHMS.get(str(algorithm))
    return key not in USED_ONLY_WITH or entry is None or getattr(entry, USED_ONLY_WITH[key])


def line_labels(settings: pd.DataFrame, keys: list[str]) -> list[str]:
    """Legend labels that name only what differs between the lines of a figure."""
    varying = [k for k in keys if settings[k].astype(str).nunique(dropna=False) > 1]
    if "algorithm" not in varying and "algorithm" in settings:
        varying.insert(0, "algorithm")  # a line always says which algorithm it is

    def label(row: pd.Series, drop_heads: bool) -> str:
        algorithm = row.get("algorithm")
        shown = [
            key
            for key in varying
            if not (drop_heads and key == "model.num_head_layers" and not head_count_matters(algorithm))
            and setting_used(key, algorithm)
        ]  # fmt: skip
        return describe(row, shown)

    labels = [label(row, drop_heads=True) for _, row in settings.iterrows()]
    if len(set(labels)) < len(labels):  # e.g. FedAvg run at two head counts: keep them apart
        labels = [label(row, drop_heads=False) for _, row in settings.iterrows()]
    return labels


def file_stem(figure: str | None, dataset: str, model: str, many_datasets: bool) -> str:
    if figure is None:
        return f"accuracy_{dataset}_{model}"
    return f"{figure}_{dataset}_{model}" if many_datasets else f"{figure}_{model}"


def _band(curve: pd.DataFrame, band: str) -> tuple[pd.Series, pd.Series] | None:
    """Lower and upper edge; NaN (no band) where a single seed gives no spread."""
    if band == "minmax":
        return curve["min"], curve["max"]
    if band == "std":
        return curve["mean"] - curve["std"], curve["mean"] + curve["std"]
    if band == "ci":
        return curve["mean"] - curve["half_width"], curve["mean"] + curve["half_width"]
    return None


def _draw_lines(ax: Axes, curves: pd.DataFrame, panel: pd.DataFrame, look: dict, band: str) -> bool:  # fmt: skip
    """A line per setting of the panel, its band, a marker on each partial round; any partial?"""
    any_partial = False
    for setting in panel["setting"]:
        curve = curves[curves["setting"] == setting].sort_values("round")
        if not len(curve):
            continue
        color, style, label = look[setting]
        ax.plot(curve["round"], curve["mean"], linestyle=style, color=color, lw=1.8, label=label)
        limits = _band(curve, band)
        if limits is not None and curve["num_seeds"].max() > 1:  # one seed has no spread to shade
            ax.fill_between(curve["round"], *limits, color=color, alpha=0.15, lw=0)
        partial = curve[curve["partial_seeds"] > 0]
        if len(partial):
            any_partial = True
            ax.plot(partial["round"], partial["mean"], PARTIAL_MARKER, color=color, ms=8, mec="black", mew=0.8, ls="none")  # fmt: skip
    return any_partial


def _caption(curves: list[pd.DataFrame], band: str) -> str:
    """What a line and its band are, as drawn: `mean over 5 seeds`, `one seed (no band)`."""
    seeds = pd.concat(curves)["num_seeds"]
    low, high = int(seeds.min()), int(seeds.max())
    accuracy = "accuracy: mean over clients"
    if high == 1:
        return f"{accuracy}\none seed per line (no band)"
    count = f"{low}" if low == high else f"{low}-{high}"
    shaded = f"\nshaded: {BAND_TEXT[band]}" if band in BAND_TEXT else ""
    return f"{accuracy}\nline: mean over {count} seeds{shaded}"


def _panels(group: pd.DataFrame, keys: list[str]) -> list[tuple[str, pd.DataFrame]]:
    """(title, settings) per combination of the varying data-split keys."""
    varying = [k for k in keys if is_panel_key(k) and group[k].astype(str).nunique(dropna=False) > 1]  # fmt: skip
    if not varying:  # one panel, titled with what its runs share, e.g. 4 classes per client
        return [(describe(group.iloc[0], [k for k in keys if is_panel_key(k)]), group)]
    titles = group.apply(lambda row: describe(row, varying), axis=1)
    panels = [(title, group[titles == title]) for title in dict.fromkeys(titles)]
    return sorted(panels, key=lambda panel: _panel_order(panel[1].iloc[0], varying))


def _panel_order(row: pd.Series, keys: list[str]) -> tuple:
    """The paper's split first, then Dirichlet by alpha; no shift first; numbers as numbers."""
    order = []
    for key in [k for k in NAMING_KEYS if k in keys] + [k for k in keys if k not in NAMING_KEYS]:
        value = row.get(key)
        if key in PANEL_ORDER:
            known = PANEL_ORDER[key]
            value = known.index(value) if value in known else len(known)
        order.append((1, "") if is_missing(value) else (0, value if isinstance(value, numbers.Real) else str(value)))  # fmt: skip
    return tuple(order)


def _looks(group: pd.DataFrame, labels: list[str]) -> dict[str, tuple[tuple, str | tuple, str]]:
    """(colour, line style, label) per setting: a colour per label, styles from the registry."""
    names = list(dict.fromkeys(labels))
    cmap = colormaps["tab10" if len(names) <= 10 else "tab20"]
    colors = {label: cmap(index % cmap.N) for index, label in enumerate(names)}
    return {
        setting: (colors[label], algorithm_style(algorithm), label)
        for setting, label, algorithm in zip(
            group["setting"], labels, group["algorithm"], strict=True
        )  # fmt: skip
    }


def _legend(fig: Figure, group: pd.DataFrame, labels: list[str], look: dict, caption: str, partial: bool) -> None:  # fmt: skip
    """One legend for every panel, in a column of its own right of them, titled with the caption."""
    handles = {}
    for setting, label in zip(group["setting"], labels, strict=True):
        color, style, _ = look[setting]
        handles.setdefault(label, Line2D([], [], color=color, linestyle=style, lw=1.8))
    if partial:
        handles[PARTIAL_LABEL] = Line2D([], [], marker=PARTIAL_MARKER, color="white", mec="black", ms=8, ls="none")  # fmt: skip
    legend = fig.legend(
        list(handles.values()), list(handles), loc="outside right center",
        fontsize=FONT["legend"], title=caption, title_fontsize=FONT["legend"], frameon=False,
    )  # fmt: skip
    legend.get_title().set_multialignment("left")


def _figure(
    runs: pd.DataFrame, group: pd.DataFrame, keys: list[str], band: str, split: str
) -> Figure:
    """One dataset and model: a column per panel (wrapping), a row per metric (test, validation)."""
    metrics = [("accuracy", f"{split} accuracy")]
    if split == "test" and runs.loc[runs["setting"].isin(group["setting"]), "val_accuracy"].notna().any():  # fmt: skip
        metrics.append(("val_accuracy", "validation accuracy"))
    curves = {column: accuracy_curves(runs, column) for column, _ in metrics}
    panels = _panels(group, keys)
    labels = line_labels(group, [k for k in keys if not is_panel_key(k)])
    look = _looks(group, labels)
    columns = min(len(panels), MAX_COLUMNS)
    blocks = math.ceil(len(panels) / columns)
    rows = blocks * len(metrics)
    # tall enough for the legend too: a line per entry, the caption and a partial-round entry
    legend_height = LEGEND_LINE * (len(set(labels)) + 4)
    height = max(PANEL_SIZE[1] * rows + 0.7, legend_height)
    # and wide enough for its longest label, so that the panels keep their size beside it
    legend_width = max(2.8, LEGEND_CHAR * max(map(len, labels)) + 0.9)
    fig = Figure(figsize=(PANEL_SIZE[0] * columns + legend_width, height), layout="constrained")
    FigureCanvasAgg(fig)  # attaches the Agg canvas: no pyplot, no global backend state
    axes = fig.subplots(rows, columns, squeeze=False, sharex=True, sharey=True)
    partial = False
    for index, (title, panel) in enumerate(panels):
        block, column = divmod(index, columns)
        for offset, (metric, ylabel) in enumerate(metrics):
            ax = axes[block * len(metrics) + offset][column]
            partial |= _draw_lines(ax, curves[metric], panel, look, band)
            if offset == 0:  # the validation row below shares its panel's title
                ax.set_title(title, fontsize=FONT["title"])
            ax.set_ylabel(ylabel if column == 0 else "", fontsize=FONT["label"])
            ax.set_ylim(0, 1.02)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.tick_params(labelsize=FONT["tick"], labelbottom=True)
            ax.grid(alpha=0.3)
    for ax in axes[-1]:
        ax.set_xlabel("round", fontsize=FONT["label"])
    for ax in axes.flat[len(panels) * len(metrics) :]:
        ax.set_visible(False)  # an empty cell of the last row of panels
    model, dataset = model_label(group["model_name"].iloc[0]), dataset_label(group["dataset.name"].iloc[0])  # fmt: skip
    fig.suptitle(f"{model} on {dataset}: personalized accuracy", fontsize=FONT["suptitle"])
    _legend(fig, group, labels, look, _caption(list(curves.values()), band), partial)
    return fig


def build_figures(
    runs: pd.DataFrame, figure: str | None = None, band: str = "minmax", split: str = "test"
) -> list[tuple[str, Figure]]:
    """(file stem, Figure) per dataset and model of the runs table."""
    if band not in BANDS:
        raise PlotError(f"band={band} is unknown: use one of {', '.join(BANDS)}")
    settings = settings_table(runs)
    keys = [k for k in setting_columns(runs) if k not in ("dataset.name", "model_name")]
    many_datasets = settings["dataset.name"].nunique() > 1
    built = []
    for (dataset, model), group in settings.groupby(["dataset.name", "model_name"], sort=False):
        stem = file_stem(figure, str(dataset), str(model), many_datasets)
        built.append((stem, _figure(runs, group, keys, band, split)))
    return built


def draw_figures(
    runs: pd.DataFrame,
    out_dir: str | Path,
    figure: str | None = None,
    band: str = "minmax",
    split: str = "test",
) -> list[Path]:
    """Write build_figures' figures into out_dir as a 300 dpi PNG and a PDF each; their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for stem, fig in build_figures(runs, figure, band, split):
        png, pdf = out_dir / f"{stem}.png", out_dir / f"{stem}.pdf"
        write_atomic(png, lambda stream, fig=fig: stream.write(png_bytes(fig)))
        # no creation date in the PDF: the same runs give the same bytes
        write_atomic(pdf, lambda stream, fig=fig: fig.savefig(stream, format="pdf", metadata={"CreationDate": None}))  # fmt: skip
        paths += [png, pdf]
    return paths


def png_bytes(fig: Figure) -> bytes:
    """The figure as a 300 dpi PNG, reduced to 256 colours (a third of the bytes, no visible loss)."""
    drawn = io.BytesIO()
    fig.savefig(drawn, format="png", dpi=DPI)
    image = Image.open(drawn).convert("RGB").quantize(256, method=Image.Quantize.FASTOCTREE)
    packed = io.BytesIO()
    image.save(packed, format="png", optimize=True, dpi=(DPI, DPI))
    return packed.getvalue()
