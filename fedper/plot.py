"""Figures and summary tables rebuilt from results.json files alone: `python -m fedper.plot`."""

from __future__ import annotations

import argparse
import json
import logging
import math
import numbers
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from fedper.errors import FedPerError
from fedper.results import RESULTS_JSON, write_text_atomic

log = logging.getLogger("fedper.plot")

# Keys that say where or on what hardware a run ran, not what it computed: runs that differ
# only in these and in the seed are repeats of one setting.
IGNORED_KEYS = frozenset(
    {
        "seed",
        "dataset.seed",
        "data_dir",
        "state_dir",
        "dataset.download",
        "server_device",
        "client_device",
    }
)
IGNORED_PREFIXES = ("client_resources.", "performance.")  # hardware choices, not settings
# Always in the summary table, even when every run shares the value, so a table read on its
# own says what was run.
CORE_KEYS = (
    "dataset.name",
    "model_name",
    "algorithm",
    "dataset.num_classes",
    "model.num_head_layers",
    "num_rounds",
)
# Columns of the long runs table that are bookkeeping, not part of a setting.
RUN_COLUMNS = ("run", "setting", "seed", "round", "accuracy")
CURVE_COLUMNS = ("mean", "std", "min", "max", "num_seeds")
STAT_COLUMNS = (
    "final_mean", "final_std", "best_mean", "best_std", "num_seeds", "seeds", "rounds_done",
)  # fmt: skip

ALGORITHM_ORDER = ("fedper", "fedavg", "fedavg_ft", "local")
ALGORITHM_NAMES = {
    "fedper": "FedPer",
    "fedavg": "FedAvg",
    "fedavg_ft": "FedAvg+FT",
    "local": "Local",
}
# FedAvg averages the whole network and `local` averages nothing, so the base/head split
# changes nothing they compute: their labels leave the head count out.
HEAD_IRRELEVANT = frozenset({"fedavg", "local"})
LINE_STYLES = {"fedper": "-", "fedavg": "--", "fedavg_ft": "-.", "local": ":"}
MODEL_NAMES = {"mobile": "MobileNet-v1", "resnet": "ResNet-34"}
DATASET_NAMES = {
    "cifar10": "CIFAR-10",
    "cifar100": "CIFAR-100",
    "flickr": "FLICKR-AES",
    "digits": "digits",
}
COLUMN_TITLES = {
    "dataset.name": "dataset",
    "model_name": "model",
    "algorithm": "algorithm",
    "dataset.num_classes": "classes/client",
    "model.num_head_layers": "head layers",
    "num_rounds": "rounds",
    "dataset.image_size": "image size",
}
BANDS = ("minmax", "std", "none")


class PlotError(FedPerError):
    """No results to plot where the user pointed, or a results file that cannot be read."""


def find_results(folders: Iterable[str | Path]) -> list[Path]:
    """Every results.json below the given folders (a results.json path counts as itself)."""
    found: dict[Path, None] = {}  # ordered and free of the repeats overlapping folders give
    for folder in map(Path, folders):
        if not folder.exists():
            raise PlotError(f"{folder} does not exist: give a run or multirun folder")
        if folder.is_file():
            if folder.name != RESULTS_JSON:
                raise PlotError(f"{folder} is a file: give a folder or a {RESULTS_JSON}")
            paths = [folder]
        else:
            paths = sorted(folder.rglob(RESULTS_JSON))
        if not paths:
            raise PlotError(f"no {RESULTS_JSON} below {folder}: give a run or multirun folder")
        found.update((path.resolve(), None) for path in paths)
    return list(found)


def flatten(config: dict, prefix: str = "") -> dict[str, object]:
    """Nested config to dotted keys; lists become JSON text so that values can be compared."""
    flat: dict[str, object] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        elif isinstance(value, list):
            flat[name] = json.dumps(value)
        else:
            flat[name] = value
    return flat


def setting_of(config: dict) -> dict[str, object]:
    """The part of a run's config that makes it a setting: all of it but seeds, paths, devices."""
    return {
        key: value
        for key, value in flatten(config).items()
        if key not in IGNORED_KEYS and not key.startswith(IGNORED_PREFIXES)
    }


def read_run(path: Path) -> dict:
    try:
        run = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise PlotError(
            f"{path} is not valid JSON ({error.msg}, line {error.lineno}): remove or rerun it"
        ) from None
    if not isinstance(run, dict) or "config" not in run or "rounds" not in run:
        raise PlotError(f"{path} has no 'config' and 'rounds': it is not a fedper results file")
    return run


def load_runs(folders: Iterable[str | Path]) -> pd.DataFrame:
    """One row per run and round: run, setting, seed, round, accuracy and the setting's keys."""
    rows = []
    for path in find_results(folders):
        run = read_run(path)
        config = run["config"]
        setting = setting_of(config)
        rounds = [r for r in run["rounds"] if r.get("round") is not None]
        if not rounds:
            log.warning("%s has no finished round yet: left out", path)
            continue
        done, planned = max(r["round"] for r in rounds), config.get("num_rounds")
        if planned is not None and done < planned:
            log.warning("%s: %d of %d rounds; its final accuracy is round %d's", path, done, planned, done)  # fmt: skip
        key = json.dumps(setting, sort_keys=True, default=str)
        for entry in rounds:
            accuracy = entry.get("accuracy")
            rows.append(
                {
                    "run": str(path.parent),
                    "setting": key,
                    "seed": config.get("seed"),
                    "round": int(entry["round"]),
                    # JSON null: a round in which no client could be evaluated
                    "accuracy": math.nan if accuracy is None else float(accuracy),
                    **setting,
                }
            )
    if not rows:
        raise PlotError("none of the results files has a finished round yet: nothing to plot")
    return pd.DataFrame(rows)


def setting_columns(runs: pd.DataFrame) -> list[str]:
    """The core keys, then every other config key whose value differs between settings."""
    keys = [c for c in runs.columns if c not in RUN_COLUMNS]
    per_setting = runs.drop_duplicates("setting")
    varying = [
        key
        for key in keys
        if key not in CORE_KEYS and per_setting[key].astype(str).nunique(dropna=False) > 1
    ]
    return [key for key in CORE_KEYS if key in keys] + sorted(varying)


def _order_key(values: pd.Series) -> tuple:
    """Sort settings the way the paper reads: dataset, model, classes, algorithm, heads."""

    def value(key: str) -> tuple:
        item = values.get(key)
        if _is_missing(item):
            return (1, "")
        # numbers.Real covers numpy's integers too, so 10 classes sort after 4
        return (0, item if isinstance(item, numbers.Real) else str(item))

    algorithm = values.get("algorithm")
    rank = (
        ALGORITHM_ORDER.index(algorithm) if algorithm in ALGORITHM_ORDER else len(ALGORITHM_ORDER)
    )
    return (
        value("dataset.name"),
        value("model_name"),
        value("dataset.num_classes"),
        rank,
        str(algorithm),
        value("model.num_head_layers"),
        value("num_rounds"),
        str(values.get("setting")),
    )


def _settings_table(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per setting (its key and display columns), in reading order."""
    table = runs.drop_duplicates("setting")[["setting", *setting_columns(runs)]]
    order = sorted(range(len(table)), key=lambda i: _order_key(table.iloc[i]))
    return table.iloc[order].reset_index(drop=True)


def accuracy_curves(runs: pd.DataFrame) -> pd.DataFrame:
    """Per setting and round, accuracy over seeds: mean, std (ddof=1), min, max, num_seeds."""
    stats = (
        runs.groupby(["setting", "round"], sort=False)["accuracy"]
        .agg(mean="mean", std="std", min="min", max="max", num_seeds="count")
        .reset_index()
    )
    curves = _settings_table(runs).merge(stats, on="setting", how="left", sort=False)
    return curves.reset_index(drop=True)


def summarize(runs: pd.DataFrame) -> pd.DataFrame:
    """Per setting: final and best accuracy, mean and std (ddof=1) over seeds, and the seeds."""
    by_run = runs.groupby("run", sort=False)
    # the last recorded round, not the last non-missing accuracy (GroupBy.last skips NaN)
    last = runs.loc[by_run["round"].idxmax()].set_index("run")
    per_run = (
        pd.DataFrame(
            {
                "setting": last["setting"],
                "seed": last["seed"],
                "rounds_done": last["round"],
                "final": last["accuracy"],
                "best": by_run["accuracy"].max(),
            }
        )
        .rename_axis("run")
        .reset_index()
    )
    repeated = per_run[per_run.duplicated(["setting", "seed"], keep=False)]
    for run in repeated["run"]:
        # e.g. the same sweep plotted from two copies: each copy counts as one more seed
        log.warning("%s repeats the seed of another run of its setting: both count", run)
    stats = (
        per_run.groupby("setting", sort=False)
        .agg(
            final_mean=("final", "mean"),
            final_std=("final", "std"),
            best_mean=("best", "mean"),
            best_std=("best", "std"),
            num_seeds=("run", "count"),
            seeds=("seed", lambda s: " ".join(str(v) for v in sorted(s))),
            rounds_done=("rounds_done", "min"),
        )
        .reset_index()
    )
    summary = _settings_table(runs).merge(stats, on="setting", how="left", sort=False)
    return summary.drop(columns="setting")


def _is_missing(value: object) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _text(value: object) -> str:
    """A config value as text; whole floats (ints widened by a missing value) lose the `.0`."""
    if _is_missing(value):
        return "–"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _format(key: str, value: object) -> str:
    """A setting value as a legend or a title reads it."""
    text = _text(value)
    if key == "algorithm":
        return ALGORITHM_NAMES.get(text, text)
    if key == "model_name":
        return MODEL_NAMES.get(text, text)
    if key == "dataset.name":
        return DATASET_NAMES.get(text, text)
    if key == "dataset.num_classes":
        return f"{text} classes per client"
    if key == "model.num_head_layers":
        return f"{text} head layer{'' if text == '1' else 's'}"
    if key == "num_rounds":
        return f"{text} rounds"
    return f"{key}={text}"


def _line_labels(settings: pd.DataFrame, keys: list[str]) -> list[str]:
    """Legend labels that name only what differs between the lines of one panel."""
    varying = [k for k in keys if settings[k].astype(str).nunique(dropna=False) > 1]

    def label(row: pd.Series, drop_heads: bool) -> str:
        parts = [
            _format(key, row[key])
            for key in varying
            if not (
                drop_heads
                and key == "model.num_head_layers"
                and row.get("algorithm") in HEAD_IRRELEVANT
            )
        ]
        return ", ".join(parts) or _format("algorithm", row.get("algorithm"))

    labels = [label(row, drop_heads=True) for _, row in settings.iterrows()]
    if len(set(labels)) < len(labels):  # e.g. FedAvg run at two head counts: keep them apart
        labels = [label(row, drop_heads=False) for _, row in settings.iterrows()]
    return labels


def _png_name(figure: str | None, dataset: str, model: str, many_datasets: bool) -> str:
    if figure is None:
        return f"accuracy_{dataset}_{model}.png"
    return f"{figure}_{dataset}_{model}.png" if many_datasets else f"{figure}_{model}.png"


def _count_text(low: int, high: int, noun: str) -> str:
    """`3 seeds`, `1 seed`, or `1-3 seeds` when some rounds have fewer seeds than others."""
    if low == high:
        return f"{low} {noun}{'' if low == 1 else 's'}"
    return f"{low}-{high} {noun}s"


def _band(curve: pd.DataFrame, band: str) -> tuple[pd.Series, pd.Series] | None:
    if band == "minmax":
        return curve["min"], curve["max"]
    if band == "std":  # no band where a single seed gives no std
        return curve["mean"] - curve["std"], curve["mean"] + curve["std"]
    return None


def draw_figures(
    curves: pd.DataFrame, out_dir: str | Path, figure: str | None = None, band: str = "minmax"
) -> list[Path]:
    """One PNG per dataset and model, a panel per classes-per-client value, a line per setting."""
    if band not in BANDS:
        raise PlotError(f"band={band} is unknown: use one of {', '.join(BANDS)}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    keys = [c for c in curves.columns if c not in ("setting", "round", *CURVE_COLUMNS)]
    settings = curves.drop_duplicates("setting")[["setting", *keys]]
    many_datasets = settings["dataset.name"].nunique() > 1
    panel_key = "dataset.num_classes"
    label_keys = [k for k in keys if k not in ("dataset.name", "model_name", panel_key)]
    pngs = []
    for (dataset, model), group in settings.groupby(["dataset.name", "model_name"], sort=False):
        # a panel per classes-per-client value, as the paper's figure 2 has
        if panel_key in group and group[panel_key].astype(str).nunique() > 1:
            panels = list(group.groupby(panel_key, sort=True))
        elif panel_key in group:
            panels = [(group[panel_key].iloc[0], group)]
        else:
            panels = [(None, group)]
        fig = Figure(figsize=(4.6 * len(panels), 3.9))
        FigureCanvasAgg(fig)  # attaches the Agg canvas: no pyplot, no global backend state
        axes = fig.subplots(1, len(panels), squeeze=False)[0]
        for ax, (panel_value, panel) in zip(axes, panels, strict=True):
            labels = _line_labels(panel, label_keys)
            for index, (label, (_, setting)) in enumerate(
                zip(labels, panel.iterrows(), strict=True)
            ):
                curve = curves[curves["setting"] == setting["setting"]].sort_values("round")
                color = f"C{index % 10}"
                style = LINE_STYLES.get(str(setting["algorithm"]), "-")
                ax.plot(
                    curve["round"], curve["mean"], style, color=color, marker="o", ms=2.5,
                    lw=1.5, label=label,
                )  # fmt: skip
                limits = _band(curve, band)
                if limits is not None:
                    ax.fill_between(curve["round"], *limits, color=color, alpha=0.15, lw=0)
            title = f"{_format('model_name', model)} · {_format('dataset.name', dataset)}"
            if not _is_missing(panel_value):
                title += f" · {_format(panel_key, panel_value)}"
            ax.set_title(title, fontsize=10)
            ax.set(xlabel="round", ylabel="personalized test accuracy", ylim=(0, 1))
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.grid(alpha=0.3)
            ax.legend(loc="lower right", fontsize=8)
        seeds = curves[curves["setting"].isin(group["setting"])]["num_seeds"]
        seed_text = _count_text(seeds.min(), seeds.max(), "seed")
        band_text = {"minmax": ", band: min to max", "std": ", band: ± std", "none": ""}[band]
        fig.suptitle(f"{figure or 'accuracy'}: mean over {seed_text}{band_text}", fontsize=10)
        fig.tight_layout()
        path = out_dir / _png_name(figure, str(dataset), str(model), many_datasets)
        fig.savefig(path, dpi=120)
        pngs.append(path)
    return pngs


def _mean_std(mean: float, std: float) -> str:
    if _is_missing(mean):
        return "–"
    return f"{mean:.3f}" if _is_missing(std) else f"{mean:.3f} ± {std:.3f}"


def summary_markdown(summary: pd.DataFrame) -> str:
    """The summary table as Markdown: a row per setting, accuracies as mean ± std."""
    keys = [c for c in summary.columns if c not in STAT_COLUMNS]
    header = [COLUMN_TITLES.get(k, k) for k in keys] + ["seeds", "final accuracy", "best accuracy"]
    # an interrupted sweep: say how far its shortest run got
    unfinished = "num_rounds" in summary and (summary["rounds_done"] < summary["num_rounds"]).any()
    if unfinished:
        header.append("rounds done")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for _, row in summary.iterrows():
        named = ("algorithm", "model_name", "dataset.name")
        cells = [_format(k, row[k]) if k in named else _text(row[k]) for k in keys]
        cells += [
            str(row["num_seeds"]),
            _mean_std(row["final_mean"], row["final_std"]),
            _mean_std(row["best_mean"], row["best_std"]),
        ]
        if unfinished:
            cells.append(_text(row["rounds_done"]))
        lines.append("| " + " | ".join(cells) + " |")
    note = (
        "Accuracy: unweighted mean over clients of each client's personalized test accuracy; "
        "final = last round, best = best round; mean ± sample std (ddof=1) over seeds."
    )
    return "\n".join(lines) + "\n\n" + note + "\n"


def write_summary(summary: pd.DataFrame, out_dir: str | Path, stem: str = "summary") -> list[Path]:
    """`<stem>.csv` (full precision) and `<stem>.md` (rounded) in out_dir."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    csv_path, md_path = out_dir / f"{stem}.csv", out_dir / f"{stem}.md"
    write_text_atomic(csv_path, summary.to_csv(index=False))
    write_text_atomic(md_path, summary_markdown(summary))
    return [csv_path, md_path]


def plot_runs(
    folders: Iterable[str | Path],
    out_dir: str | Path,
    figure: str | None = None,
    band: str = "minmax",
) -> tuple[list[Path], pd.DataFrame]:
    """Figures and summary for every results.json below folders: (PNG paths, summary table).

    With `figure`, PNGs are `<figure>_<model>.png` and the summary `<figure>_summary.csv/.md`,
    so several figures can share one output folder; without, `accuracy_<dataset>_<model>.png`
    and `summary.csv/.md`.
    """
    runs = load_runs(folders)
    pngs = draw_figures(accuracy_curves(runs), out_dir, figure, band)
    summary = summarize(runs)
    write_summary(summary, out_dir, f"{figure}_summary" if figure else "summary")
    return pngs, summary


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: exit 0 with figures written, 2 with a one-line error."""
    parser = argparse.ArgumentParser(
        prog="python -m fedper.plot",
        description="Accuracy-per-round figures and a summary table from results.json files "
        "(searched recursively below each folder); seeds of one setting are averaged.",
    )
    parser.add_argument("folders", nargs="+", type=Path, help="run or multirun folders")
    parser.add_argument("--out", type=Path, help="output folder (default: the first folder)")
    parser.add_argument(
        "--figure",
        help="name stem of the PNGs and summary, e.g. figure2 -> figure2_mobile.png "
        "(default: accuracy_<dataset>_<model>.png and summary.csv)",
    )
    parser.add_argument(
        "--band", choices=BANDS, default="minmax", help="shaded band around each mean curve"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(format="fedper.plot: warning: %(message)s", level=logging.WARNING)
    out_dir = args.out or (args.folders[0] if args.folders[0].is_dir() else args.folders[0].parent)
    try:
        pngs, summary = plot_runs(args.folders, out_dir, args.figure, args.band)
    except PlotError as error:
        print(f"fedper.plot: error: {error}", file=sys.stderr)
        return 2
    print(summary_markdown(summary), end="")
    for path in pngs:
        print(f"wrote {path}")
    stem = f"{args.figure}_summary" if args.figure else "summary"
    print(f"wrote {Path(out_dir) / stem}.csv and .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
