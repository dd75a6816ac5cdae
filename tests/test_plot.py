"""fedper.plot on hand-written results.json files: tables, figures and the command line."""

from __future__ import annotations

import dataclasses
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from helpers.plot_results import config, write_run
from PIL import Image

from fedper.algorithms import ALGORITHMS
from fedper.plot import accuracy_curves, build_figures, load_runs, plot_runs, summary_table
from fedper.plot.figures import PARTIAL_LABEL, PARTIAL_MARKER
from fedper.registry import Registry

ROOT = Path(__file__).resolve().parents[1]

# accuracy per round (4 rounds) of each algorithm and seed
ACCURACIES = {
    "fedper": {1: [0.2, 0.5, 0.7, 0.7], 2: [0.3, 0.6, 0.8, 0.8], 3: [0.4, 0.7, 0.9, 0.9]},
    "fedavg": {1: [0.1, 0.2, 0.3, 0.3], 2: [0.1, 0.3, 0.5, 0.5], 3: [0.2, 0.2, 0.4, 0.4]},
}  # fmt: skip


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    """2 settings x 3 seeds, laid out as a Hydra multirun (one folder per job)."""
    root = tmp_path / "multirun" / "2025-01-01" / "12-00-00"
    job = 0
    for algorithm, per_seed in ACCURACIES.items():
        for seed, accuracies in per_seed.items():
            write_run(root / str(job), config(algorithm, seed), accuracies)
            job += 1
    return tmp_path / "multirun"


def test_summary_gives_mean_and_95_percent_interval_over_seeds(sweep: Path, tmp_path: Path) -> None:
    output = plot_runs([sweep], tmp_path / "out", target=0.5)
    summary = output.summary
    assert len(summary) == 2  # seeds, paths and devices do not split a setting
    assert list(summary["algorithm"]) == ["fedper", "fedavg"]  # the registry's order
    fedper, fedavg = (summary.set_index("algorithm").loc[a] for a in ("fedper", "fedavg"))
    # FedPer finals 0.7 0.8 0.9: mean 0.8, s 0.1, half-width 4.302653 * 0.1 / sqrt(3) = 0.248414
    assert fedper["final_mean"] == pytest.approx(0.8)
    assert fedper["final_half_width"] == pytest.approx(0.248414, abs=1e-6)
    assert fedper["final_ci_low"] == pytest.approx(0.551586, abs=1e-6)
    assert fedper["final_n"] == 3
    # last 5 rounds (all 4 here): 0.525 0.625 0.725, mean 0.625, again s 0.1
    assert fedper["last5_mean"] == pytest.approx(0.625)
    assert fedper["last5_half_width"] == pytest.approx(0.248414, abs=1e-6)
    # FedAvg last 5: 0.225 0.35 0.3, mean 0.291667, s 0.062915, half 4.302653 * s / sqrt(3) = 0.156290
    assert fedavg["last5_mean"] == pytest.approx(0.291667, abs=1e-6)
    assert fedavg["last5_half_width"] == pytest.approx(0.156290, abs=1e-6)
    # the mean over all 4 rounds is the last-5 mean here; 0.5 is first reached in round 2
    assert fedper["auc_mean"] == pytest.approx(0.625)
    assert fedper["round_to_target_mean"] == 2 and fedper["round_to_target_half_width"] == 0
    assert fedper["never_reached_target"] == 0
    # FedAvg seeds 1 and 3 never reach 0.5 (round 5 each), seed 2 in round 3: mean 13/3
    assert fedavg["round_to_target_mean"] == pytest.approx(13 / 3)
    assert fedavg["never_reached_target"] == 2
    assert fedper["seeds"] == "1 2 3" and fedper["num_seeds"] == 3
    assert fedper["rounds_done"] == 4 and fedper["partial_rounds"] == 0
    # the files hold the same table
    on_disk = pd.read_csv(tmp_path / "out" / "summary.csv")
    assert on_disk["final_mean"].tolist() == pytest.approx(summary["final_mean"].tolist())
    assert on_disk["final_ci_high"].tolist() == pytest.approx(summary["final_ci_high"].tolist())
    markdown = (tmp_path / "out" / "summary.md").read_text()
    row = "| digits | MobileNet-v1 | FedPer | 4 | 2 | 4 | 3 (1–3) | 0.800 ± 0.248 | 0.625 ± 0.248 | 0.625 ± 0.248 | 2.0 ± 0.0 | – | – | – | 0 |"  # fmt: skip
    assert row in markdown
    assert "| 4.3 ± 2.9 (2 never) |" in markdown
    assert "95% confidence interval" in markdown and "test at best val round" in markdown
    assert "round to 0.50" in markdown


def test_one_seed_is_shown_without_an_interval(tmp_path: Path) -> None:
    write_run(tmp_path / "one", config("fedper", 7), [0.5, 0.6, 0.7, 0.8])
    output = plot_runs([tmp_path], tmp_path / "out")
    assert pd.isna(output.summary.iloc[0]["final_half_width"])
    markdown = (tmp_path / "out" / "summary.md").read_text()
    assert "| 1 (7) | 0.800 | 0.650 |" in markdown


def test_curves_are_the_per_round_mean_over_seeds(sweep: Path) -> None:
    curves = accuracy_curves(load_runs([sweep]))
    for algorithm, per_seed in ACCURACIES.items():
        curve = curves[curves["algorithm"] == algorithm].sort_values("round")
        assert curve["round"].tolist() == [1, 2, 3, 4]
        by_round = list(zip(*per_seed.values(), strict=True))
        assert curve["mean"].tolist() == pytest.approx([statistics.mean(r) for r in by_round])
        assert curve["std"].tolist() == pytest.approx([statistics.stdev(r) for r in by_round])
        assert curve["min"].tolist() == pytest.approx([min(r) for r in by_round])
        assert curve["max"].tolist() == pytest.approx([max(r) for r in by_round])
        assert curve["num_seeds"].tolist() == [3, 3, 3, 3]
        assert curve["partial_seeds"].tolist() == [0, 0, 0, 0]


def test_figures_are_named_after_the_figure_as_png_and_pdf(sweep: Path, tmp_path: Path) -> None:
    figures = plot_runs([sweep], tmp_path / "default", band="ci").figures
    assert [p.name for p in figures] == ["accuracy_digits_mobile.png", "accuracy_digits_mobile.pdf"]
    output = plot_runs([sweep], tmp_path / "named", figure="figure2")
    assert [p.name for p in output.figures] == ["figure2_mobile.png", "figure2_mobile.pdf"]
    assert [p.name for p in output.tables] == ["figure2_summary.csv", "figure2_summary.md"]
    png, pdf = output.figures
    assert png.read_bytes().startswith(b"\x89PNG") and pdf.read_bytes().startswith(b"%PDF")
    with Image.open(png) as image:
        assert image.info["dpi"] == pytest.approx((300, 300), abs=0.01)
        assert image.width >= 1800  # a slide's width at 300 dpi


def partial_lines(ax) -> list:
    return [line for line in ax.get_lines() if line.get_marker() == PARTIAL_MARKER]


def test_partial_rounds_are_marked_on_the_curve_and_counted(tmp_path: Path) -> None:
    # FedPer seed 1 went on with fewer clients in round 2, seed 2 (an older file) in round 3
    write_run(
        tmp_path / "p1",
        config("fedper", 1),
        [0.2, 0.4, 0.6, 0.8],
        partial=[False, True, False, False],
    )
    write_run(
        tmp_path / "p2", config("fedper", 2), [0.4, 0.6, 0.8, 1.0], clients_failed=[0, 0, 1, 0]
    )
    write_run(tmp_path / "a1", config("fedavg", 1), [0.1, 0.2, 0.3, 0.4])
    runs = load_runs([tmp_path])
    curves = accuracy_curves(runs)
    fedper = curves[curves["algorithm"] == "fedper"].sort_values("round")
    assert fedper["partial_seeds"].tolist() == [0, 1, 1, 0]
    [(_, fig)] = build_figures(runs)
    [ax] = fig.axes
    markers = [line for line in partial_lines(ax) if len(line.get_xdata())]
    assert len(markers) == 1  # FedAvg had none
    assert list(markers[0].get_xdata()) == [2, 3]
    assert list(markers[0].get_ydata()) == pytest.approx([0.5, 0.7])  # on the mean curve
    assert PARTIAL_LABEL in legend_texts(fig)
    summary = summary_table(runs).set_index("algorithm")
    assert summary.loc["fedper", "partial_rounds"] == 2
    assert summary.loc["fedavg", "partial_rounds"] == 0


def legend_texts(fig) -> list[str]:
    [legend] = fig.legends  # one legend for the figure, outside every panel
    return [text.get_text() for text in legend.get_texts()]


def test_no_partial_marker_without_partial_rounds(sweep: Path) -> None:
    [(_, fig)] = build_figures(load_runs([sweep]))
    assert partial_lines(fig.axes[0]) == []
    assert PARTIAL_LABEL not in legend_texts(fig)


def test_labels_styles_and_order_come_from_the_registries(
    sweep: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    renamed = dataclasses.replace(ALGORITHMS["fedavg"], label="Averaged", style=":")
    reordered = Registry("algorithm")  # FedAvg first in the registry: first in tables, legends
    for algorithm in (renamed, *(a for a in ALGORITHMS.values() if a.name != "fedavg")):
        reordered.add(algorithm)
    monkeypatch.setattr("fedper.plot.display.ALGORITHMS", reordered)
    runs = load_runs([sweep])
    assert list(summary_table(runs)["algorithm"]) == ["fedavg", "fedper"]
    [(_, fig)] = build_figures(runs)
    lines = {line.get_label(): line for line in fig.axes[0].get_lines()}
    assert lines["Averaged"].get_linestyle() == ":"
    assert lines["FedPer"].get_linestyle() == "-"
    assert legend_texts(fig) == ["Averaged", "FedPer"]
    assert fig.get_suptitle().startswith("MobileNet-v1 on digits")


def test_no_plot_module_lists_algorithm_or_model_names() -> None:
    for module in (ROOT / "fedper" / "plot").glob("*.py"):
        source = module.read_text()
        for name in ("fedavg_ft", '"mobile"', '"resnet"', "FedAvg+FT", "ResNet-34"):
            assert name not in source, f"{module.name} repeats {name}: read the registries"


def test_settings_differ_in_any_key_but_seeds_and_paths(tmp_path: Path) -> None:
    for seed in (1, 2):
        write_run(tmp_path / f"lr01_{seed}", config("fedper", seed), [0.5, 0.6, 0.7, 0.8])
        write_run(tmp_path / f"lr1_{seed}", config("fedper", seed, learning_rate=0.1), [0.1] * 4)
        # classes per client become panels and ResNet its own PNG
        cfg = config("fedavg", seed, model_name="resnet")
        cfg["dataset"] = {**cfg["dataset"], "num_classes": 8}
        write_run(tmp_path / f"resnet_{seed}", cfg, [0.3] * 4)
    output = plot_runs([tmp_path], tmp_path / "out", figure="sweep")
    summary = output.summary
    assert len(summary) == 3
    assert "learning_rate" in summary.columns  # the key that differs is shown
    assert "state_dir" not in summary.columns and "server_device" not in summary.columns
    assert sorted(summary["learning_rate"]) == [0.01, 0.01, 0.1]
    assert (summary["num_seeds"] == 2).all()
    assert sorted(p.name for p in output.figures if p.suffix == ".png") == [
        "sweep_mobile.png",
        "sweep_resnet.png",
    ]


def test_an_unfinished_run_counts_its_last_round(tmp_path: Path) -> None:
    write_run(tmp_path / "done", config("fedper", 1), [0.1, 0.2, 0.3, 0.4])
    write_run(tmp_path / "cut", config("fedper", 2), [0.3, None])  # a round nobody answered
    write_run(tmp_path / "started", config("fedper", 3), [])  # no round yet: left out
    row = summary_table(load_runs([tmp_path])).iloc[0]
    assert row["num_seeds"] == 2
    assert row["rounds_done"] == 2
    assert row["final_n"] == 1  # round 2 of seed 2 recorded no accuracy
    assert row["last5_mean"] == pytest.approx((0.25 + 0.3) / 2)  # the missing round left out


def test_a_run_whose_clients_restarted_their_heads_is_named(tmp_path: Path, caplog) -> None:
    write_run(tmp_path / "clean", config("fedper", 1), [0.1, 0.2, 0.3, 0.4])
    restarted = write_run(
        tmp_path / "restarted", config("fedper", 2), [0.1, 0.2, 0.3, 0.4],
        restarted_heads=[None, [1, 4], [1], None],
    )  # fmt: skip
    load_runs([tmp_path])
    assert [r.getMessage() for r in caplog.records] == [
        f"{restarted}: clients started over from their initial head in "
        "round(s) [2, 3] (restart_lost_heads)"
    ]


def run_plot(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "fedper.plot", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env=os.environ.copy(),
    )


def test_command_line_writes_figures_summary_and_differences(sweep: Path, tmp_path: Path) -> None:
    out = tmp_path / "cli"
    result = run_plot(
        str(sweep), "--out", str(out), "--figure", "figure2", "--compare", "algorithm=fedper"
    )
    assert result.returncode == 0, result.stderr
    assert (out / "figure2_mobile.png").stat().st_size > 0
    for name in ("figure2_summary", "figure2_differences"):
        assert (out / f"{name}.csv").is_file() and (out / f"{name}.md").is_file()
        assert str(out / f"{name}.md") in result.stdout
    differences = pd.read_csv(out / "figure2_differences.csv")
    final = differences.set_index("measure").loc["final"]
    # per seed FedAvg - FedPer: 0.3-0.7, 0.5-0.8, 0.4-0.9 = -0.4, -0.3, -0.5: mean -0.4,
    # s 0.1, half-width 0.248414: [-0.648, -0.152] excludes 0
    assert final["difference_mean"] == pytest.approx(-0.4)
    assert final["difference_half_width"] == pytest.approx(0.248414, abs=1e-6)
    assert final["verdict"] == "resolved: FedPer ahead"
    # t = -0.4 / (0.1 / sqrt 3) = -6.928 with 2 degrees of freedom, where the two-sided
    # p-value is 1 - |t| / sqrt(2 + t^2) = 0.0202; one comparison per measure: Holm p = p
    assert final["p_value"] == pytest.approx(0.020204, abs=1e-6)
    assert final["p_holm"] == pytest.approx(final["p_value"]) and final["family_size"] == 1
    markdown = (out / "figure2_differences.md").read_text()
    assert (
        "| FedAvg − FedPer | -0.400 ± 0.248 | [-0.648, -0.152] | 3 "
        "| 1: -0.400, 2: -0.300, 3: -0.500 | 0.020 | resolved: FedPer ahead "
        "| 0.020 | resolved: FedPer ahead |"
    ) in markdown
    assert "### final round (a family of 1 comparison, Holm-adjusted)" in markdown
    assert "FedPer" in result.stdout and "FedAvg − FedPer" in result.stdout


@pytest.mark.parametrize("where", ["empty", "missing"])
def test_no_results_is_a_one_line_error(tmp_path: Path, where: str) -> None:
    folder = tmp_path / where
    if where == "empty":
        (folder / "sub").mkdir(parents=True)
    result = run_plot(str(folder))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fedper.plot: error:")
    assert str(folder) in lines[0]


def test_a_bad_comparison_is_a_one_line_error(sweep: Path, tmp_path: Path) -> None:
    result = run_plot(str(sweep), "--out", str(tmp_path / "x"), "--compare", "algorithm=fedprox")
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "fedper.plot: error: --compare algorithm=fedprox: no setting has algorithm=fedprox; "
        "its values here are fedper, fedavg"
    )


def test_hardware_switches_do_not_split_a_setting() -> None:
    """Devices, resources, engines and performance switches are how a run ran, not what it measured."""
    from fedper.plot import setting_from_config

    with_switches = {"algorithm": "fedper", "seed": 42, "performance": {"autocast": "auto"},
                     "client_resources": {"num_cpus": 1}, "server_device": "auto",
                     "engine": {"name": "ray", "num_cpus": 2}}  # fmt: skip
    without = {"algorithm": "fedper", "seed": 43}
    assert (
        setting_from_config(with_switches)
        == setting_from_config(without)
        == {
            "algorithm": "fedper",
            "evaluate_every": 1,
            "clients_per_evaluation": None,
            "shift.name": "none",
        }
    )  # the keys a config lacked are read as what it did (fedper.settings.ADDED_KEYS)


def test_figures_draw_validation_below_test_with_a_caption_that_matches(tmp_path: Path) -> None:
    for seed in (1, 2, 3):
        write_run(tmp_path / "three" / f"s{seed}", config("fedper", seed), [0.2, 0.5, 0.7, 0.8], [0.1, 0.4, 0.6, 0.7])  # fmt: skip
    write_run(tmp_path / "one" / "s1", config("fedavg", 1), [0.1, 0.3, 0.5, 0.6])  # no validation
    [(_, three)] = build_figures(load_runs([tmp_path / "three"]))
    test_ax, val_ax = three.axes
    assert (test_ax.get_ylabel(), val_ax.get_ylabel()) == ("test accuracy", "validation accuracy")
    assert [line.get_ydata()[-1] for line in val_ax.get_lines()] == pytest.approx([0.7])
    [legend] = three.legends
    caption = legend.get_title().get_text()
    assert "mean over 3 seeds" in caption and "shaded: min to max over seeds" in caption
    assert len(test_ax.collections) == 1  # the band
    [(_, one)] = build_figures(load_runs([tmp_path / "one"]), band="minmax")
    [only] = one.axes  # no validation split: no validation panel
    assert "one seed per line (no band)" in one.legends[0].get_title().get_text()
    assert len(only.collections) == 0  # one seed: nothing shaded
    # the legend sits beside the panels, never on them
    three.canvas.draw()
    box = legend.get_window_extent()
    assert all(not box.overlaps(ax.get_window_extent()) for ax in three.axes)


def test_a_panel_per_partition_and_shift_in_reading_order(tmp_path: Path) -> None:
    shifts = {"concept": {"name": "concept", "groups": 2}, "none": {"name": "none"},
              "feature": {"name": "feature", "groups": 4, "rotations": [0, 90, 180, 270]}}  # fmt: skip
    for name, shift in shifts.items():
        for algorithm in ("fedavg", "fedper"):
            cfg = config(algorithm, 1, shift=shift, partition={"name": "dirichlet", "alpha": 0.1})
            write_run(tmp_path / f"{name}_{algorithm}", cfg, [0.2, 0.4, 0.6, 0.8])
    [(_, fig)] = build_figures(load_runs([tmp_path]))
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == ["no shift", "feature shift", "concept shift"]  # the split is shared
    assert legend_texts(fig) == ["FedPer", "FedAvg"]


def test_help_says_what_the_tables_hold():
    from fedper.plot.command import plot_parser

    text = plot_parser().format_help()
    assert "(mean ± 95% CI over seeds)" in text and "%%" not in text
