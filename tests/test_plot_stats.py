"""fedper.plot.stats and .compare: intervals, per-run measures and paired differences by hand."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest
from helpers.plot_results import config, write_run

from fedper.plot import (
    build_figures,
    holm,
    load_runs,
    mean_interval,
    p_value,
    paired_differences,
    parse_comparison,
)
from fedper.plot.compare import PAIRED_MEASURES, verdict
from fedper.plot.runs import PlotError
from fedper.plot.stats import Interval, run_measures, summary_table, t_quantile


def test_t_quantiles_are_the_two_sided_95_percent_ones() -> None:
    # t(0.975, df) from a printed table: df 1, 2, 4
    assert t_quantile(2) == pytest.approx(12.706205, abs=1e-6)
    assert t_quantile(3) == pytest.approx(4.302653, abs=1e-6)
    assert t_quantile(5) == pytest.approx(2.776445, abs=1e-6)


def test_interval_is_student_t_over_the_sample_std() -> None:
    # 0.7, 0.8, 0.9: mean 0.8, s = 0.1, half-width 4.302653 * 0.1 / sqrt(3) = 0.248414
    three = mean_interval([0.7, 0.8, 0.9])
    assert (three.mean, three.n) == (pytest.approx(0.8), 3)
    assert three.half_width == pytest.approx(0.248414, abs=1e-6)
    assert three.low == pytest.approx(0.551586, abs=1e-6)
    assert three.high == pytest.approx(1.048414, abs=1e-6)
    # 0.5, 0.7: s = 0.141421, half-width 12.706205 * 0.141421 / sqrt(2) = 1.270620
    assert mean_interval([0.5, 0.7]).half_width == pytest.approx(1.270620, abs=1e-6)
    # 0.1 .. 0.5: s = sqrt(0.025) = 0.158114, half-width 2.776445 * 0.158114 / sqrt(5) = 0.196324
    assert mean_interval([0.1, 0.2, 0.3, 0.4, 0.5]).half_width == pytest.approx(0.196324, abs=1e-6)


def test_one_value_has_no_interval_and_missing_values_do_not_count() -> None:
    one = mean_interval([0.6, math.nan, None])
    assert (one.mean, one.n) == (0.6, 1) and math.isnan(one.half_width)
    assert one.contains_zero()  # no interval resolves nothing
    none = mean_interval([])
    assert none.n == 0 and math.isnan(none.mean)


def test_verdict_says_which_side_only_when_the_interval_excludes_zero() -> None:
    assert verdict(Interval(0.4, 0.25, 3), "FedAvg", "FedPer") == "resolved: FedAvg ahead"
    assert verdict(Interval(-0.4, 0.25, 3), "FedAvg", "FedPer") == "resolved: FedPer ahead"
    assert verdict(Interval(-0.2, 0.25, 3), "FedAvg", "FedPer") == "not resolved"
    assert verdict(Interval(0.3, math.nan, 1), "FedAvg", "FedPer").startswith("not resolved")
    assert verdict(Interval(math.nan, math.nan, 0), "FedAvg", "FedPer") == "no shared seeds"


def test_best_round_is_the_validation_argmax_and_reports_its_test_accuracy(tmp_path: Path) -> None:
    # seed 1: test peaks in round 2 (0.9), validation in round 3: report round 3's test, 0.6
    write_run(tmp_path / "a", config("fedper", 1), [0.5, 0.9, 0.6, 0.7], [0.4, 0.5, 0.8, 0.6])
    # seed 2: validation ties in rounds 2 and 3: the earlier round, test 0.3
    write_run(tmp_path / "b", config("fedper", 2), [0.2, 0.3, 0.4, 0.5], [0.5, 0.8, 0.8, None])
    measures = run_measures(load_runs([tmp_path])).set_index("seed")
    assert measures.loc[1, "best_val_round"] == 3
    assert measures.loc[1, "best_val_test"] == pytest.approx(0.6)
    assert measures.loc[2, "best_val_round"] == 2
    assert measures.loc[2, "best_val_test"] == pytest.approx(0.3)
    row = summary_table(load_runs([tmp_path])).iloc[0]
    # 0.6 and 0.3: mean 0.45, s = 0.212132, half-width 12.706205 * 0.212132 / sqrt(2) = 1.905931
    assert row["best_val_test_mean"] == pytest.approx(0.45)
    assert row["best_val_test_half_width"] == pytest.approx(1.905931, abs=1e-6)
    assert row["best_val_test_n"] == 2


def test_runs_without_validation_have_no_best_round(tmp_path: Path) -> None:
    write_run(tmp_path / "old", config("fedper", 1), [0.5, 0.9, 0.6, 0.7])  # no val_accuracy key
    write_run(tmp_path / "null", config("fedper", 2), [0.5, 0.6], [None, None])
    row = summary_table(load_runs([tmp_path])).iloc[0]
    assert row["best_val_test_n"] == 0 and math.isnan(row["best_val_test_mean"])
    assert row["final_n"] == 2


def test_level_area_and_rounds_to_a_fixed_target_by_hand(tmp_path: Path) -> None:
    # 8 rounds: last 5 are 0.90 0.85 0.90 0.95 0.90 (mean 0.90); all 8 sum to 5.9 (mean
    # 0.7375); 0.9 is first reached in round 4
    long = [0.10, 0.50, 0.80, 0.90, 0.85, 0.90, 0.95, 0.90]
    write_run(tmp_path / "long", config("fedper", 1, num_rounds=8), long)
    # 3 rounds: the plateau and the area are all of them, mean 0.5; 0.9 never reached:
    # counted as round 3 + 1
    write_run(tmp_path / "short", config("fedavg", 1, num_rounds=3), [0.2, 0.6, 0.7])
    measures = run_measures(load_runs([tmp_path]), target=0.9).set_index("run")
    long_run, short_run = (
        measures.loc[str(tmp_path / "long")],
        measures.loc[str(tmp_path / "short")],
    )
    assert long_run["last5"] == pytest.approx(0.90)
    assert long_run["auc"] == pytest.approx(0.7375)
    assert long_run["round_to_target"] == 4 and long_run["reached_target"]
    assert short_run["last5"] == pytest.approx(0.5) and short_run["auc"] == pytest.approx(0.5)
    assert short_run["round_to_target"] == 4 and not short_run["reached_target"]
    assert short_run["final"] == pytest.approx(0.7)


def test_only_evaluated_rounds_count_in_tables_and_figures(tmp_path: Path) -> None:
    """Rounds with `evaluated: false` (sampled evaluation) and null accuracies are left out."""
    accuracies = [0.10, None, 0.80, None, 0.85, None, 0.95, 0.90]
    evaluated = [a is not None for a in accuracies]
    write_run(tmp_path / "sparse", config("fedper", 1, num_rounds=8), accuracies, evaluated=evaluated)  # fmt: skip
    runs = load_runs([tmp_path])
    assert runs["round"].tolist() == [1, 3, 5, 7, 8]
    row = summary_table(runs, target=0.9).iloc[0]
    # evaluated rounds 0.10 0.80 0.85 0.95 0.90: last 5 and area 3.6 / 5 = 0.72; 0.9 first in round 7
    assert row["final_mean"] == pytest.approx(0.90)
    assert row["last5_mean"] == pytest.approx(0.72) and row["auc_mean"] == pytest.approx(0.72)
    assert row["round_to_target_mean"] == 7
    [(_, fig)] = build_figures(runs)
    [line] = [line for line in fig.axes[0].get_lines() if line.get_label() == "FedPer"]
    assert list(line.get_xdata()) == [1, 3, 5, 7, 8]


def test_example_weighted_accuracy_is_recorded_or_computed_from_the_clients(tmp_path: Path) -> None:
    clients = {"0": {"accuracy": 1.0, "num_examples": 30, "val_accuracy": 0.5, "num_val_examples": 10},
               "1": {"accuracy": 0.5, "num_examples": 10, "val_accuracy": 1.0, "num_val_examples": 30}}  # fmt: skip
    # test: (30 * 1.0 + 10 * 0.5) / 40 = 0.875; validation: (10 * 0.5 + 30 * 1.0) / 40 = 0.875
    write_run(tmp_path / "computed", config("fedper", 1, num_rounds=1), [0.75], [0.75], per_client=[clients])  # fmt: skip
    write_run(tmp_path / "recorded", config("fedper", 2, num_rounds=1), [0.75], accuracy_weighted=[0.6])  # fmt: skip
    measures = run_measures(load_runs([tmp_path])).set_index("seed")
    assert measures.loc[1, "final_weighted"] == pytest.approx(0.875)
    assert measures.loc[1, "final"] == pytest.approx(0.75)
    assert measures.loc[2, "final_weighted"] == pytest.approx(0.6)
    on_validation = run_measures(load_runs([tmp_path / "computed"], metric="val"))
    assert on_validation["final_weighted"].iloc[0] == pytest.approx(0.875)


def test_paired_t_test_p_values_by_hand() -> None:
    # -0.1 0.0 -0.3: t = -0.1333 / (0.1528 / sqrt 3) = -1.512 with 2 degrees of freedom,
    # two-sided p = 1 - |t| / sqrt(2 + t^2) = 0.2697
    assert p_value([-0.1, 0.0, -0.3]) == pytest.approx(0.269703, abs=1e-6)
    assert p_value([0.2, 0.2, 0.2]) == 0.0  # no spread, not 0: as certain as it gets
    assert p_value([0.0, 0.0]) == 1.0
    assert math.isnan(p_value([0.3])) and math.isnan(p_value([]))


def test_holm_adjusts_a_family_step_down_by_hand() -> None:
    # sorted 0.005 0.01 0.03 0.04 (m = 4): 4 * 0.005 = 0.02, 3 * 0.01 = 0.03,
    # 2 * 0.03 = 0.06, 1 * 0.04 = 0.04 -> kept at 0.06 (adjusted values never decrease)
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    # a comparison without a test (NaN) is outside the family: m = 2
    adjusted = holm([math.nan, 0.2, 0.01])
    assert math.isnan(adjusted[0]) and adjusted[1:] == pytest.approx([0.2, 0.02])
    assert holm([0.6, 0.7]) == [1.0, 1.0]  # capped at 1
    assert holm([]) == []


def test_partial_rounds_are_counted_from_the_flag_or_older_failure_counts(tmp_path: Path) -> None:
    write_run(
        tmp_path / "new",
        config("fedper", 1),
        [0.1, 0.2, 0.3, 0.4],
        partial=[False, True, True, False],
        clients_failed=[0, 1, 1, 0],
    )
    write_run(
        tmp_path / "old", config("fedper", 2), [0.1, 0.2, 0.3, 0.4], clients_failed=[0, 0, 2, 0]
    )
    row = summary_table(load_runs([tmp_path])).iloc[0]
    assert row["partial_rounds"] == 3


def write_pairs(root: Path) -> None:
    """FedPer seeds 1-4 at 4 and 8 classes, FedAvg seeds 2-5 at 4 classes: one round each."""
    fedper = {1: 0.9, 2: 0.5, 3: 0.6, 4: 0.7}
    fedavg = {2: 0.4, 3: 0.6, 4: 0.4, 5: 0.1}
    for seed, accuracy in fedper.items():
        write_run(root / f"fedper_c4_s{seed}", config("fedper", seed, num_rounds=1), [accuracy])
        cfg = config("fedper", seed, num_rounds=1)
        cfg["dataset"] = {**cfg["dataset"], "num_classes": 8}
        write_run(root / f"fedper_c8_s{seed}", cfg, [0.5])
    for seed, accuracy in fedavg.items():
        write_run(root / f"fedavg_c4_s{seed}", config("fedavg", seed, num_rounds=1), [accuracy])


def test_paired_differences_use_only_shared_seeds_within_a_group(tmp_path: Path) -> None:
    write_pairs(tmp_path)
    table = paired_differences(load_runs([tmp_path]), [parse_comparison("algorithm=fedper")])
    # 8 classes has no FedAvg: the only group with a comparison is 4 classes
    assert set(table["dataset.num_classes"]) == {4}
    final = table[table["measure"] == "final"].iloc[0]
    assert (final["reference"], final["other"]) == ("fedper", "fedavg")
    assert final["comparison"] == "FedAvg − FedPer"
    # seeds 2, 3, 4: 0.4-0.5, 0.6-0.6, 0.4-0.7 = -0.1, 0.0, -0.3; mean -0.133333,
    # s = 0.152753, half-width 4.302653 * 0.152753 / sqrt(3) = 0.379458
    assert final["seeds"] == "2 3 4"
    assert [float(d) for d in final["differences"].split()] == pytest.approx([-0.1, 0.0, -0.3])
    assert final["difference_mean"] == pytest.approx(-0.133333, abs=1e-6)
    assert final["difference_half_width"] == pytest.approx(0.379458, abs=1e-6)
    assert final["difference_n"] == 3
    assert final["verdict"] == "not resolved"
    assert final["p_value"] == pytest.approx(0.269703, abs=1e-6)  # see the p-value test
    assert set(table["measure"]) == set(PAIRED_MEASURES)


def test_a_comparison_that_names_nothing_is_a_plot_error(tmp_path: Path) -> None:
    write_pairs(tmp_path)
    runs = load_runs([tmp_path])
    message = "no setting has algorithm=fedprox; its values here are fedper, fedavg"
    with pytest.raises(PlotError, match=message):
        paired_differences(runs, [parse_comparison("algorithm=fedprox")])
    with pytest.raises(PlotError, match="no setting varies or shows the key optimizer"):
        paired_differences(runs, [parse_comparison("optimizer=sgd")])
    with pytest.raises(PlotError, match="write key=value"):
        parse_comparison("algorithm")


def test_tables_on_validation_data_read_only_validation_accuracy(tmp_path):
    from helpers.plot_results import config, write_run

    from fedper.plot.command import plot_runs

    for seed, (test, val) in enumerate([(0.9, 0.5), (0.8, 0.7)], start=1):
        write_run(tmp_path / f"s{seed}", config("fedper", seed), [test] * 4, [val] * 4)
    output = plot_runs([tmp_path], tmp_path / "out", metric="val")
    assert output.summary["final_mean"].iloc[0] == pytest.approx(0.6)  # (0.5 + 0.7) / 2
    written = sorted(p.name for p in output.tables)
    assert written == ["val_summary.csv", "val_summary.md"]
    assert "These are validation accuracies" in (tmp_path / "out" / "val_summary.md").read_text()


def test_each_measure_is_a_holm_family_over_every_comparison_of_the_table(tmp_path: Path) -> None:
    # FedPer reaches 0.5 in round 2 on every seed; FedAvg in rounds 5 (never), 3, 5 (never):
    # FedAvg - FedPer = +3, +1, +3 rounds, mean 2.33, p 0.0728; fewer rounds is ahead
    fedper = {1: [0.2, 0.5, 0.7, 0.7], 2: [0.3, 0.6, 0.8, 0.8], 3: [0.4, 0.7, 0.9, 0.9]}
    fedavg = {1: [0.1, 0.2, 0.3, 0.3], 2: [0.1, 0.3, 0.5, 0.5], 3: [0.2, 0.2, 0.4, 0.4]}
    local = {1: [0.3, 0.4, 0.6, 0.6], 2: [0.2, 0.5, 0.6, 0.9], 3: [0.1, 0.6, 0.7, 0.8]}
    for algorithm, per_seed in (("fedper", fedper), ("fedavg", fedavg), ("local", local)):
        for seed, accuracies in per_seed.items():
            write_run(tmp_path / f"{algorithm}_{seed}", config(algorithm, seed), accuracies)
    table = paired_differences(load_runs([tmp_path]), [parse_comparison("algorithm=fedper")], 0.5)
    speed = table[table["measure"] == "round_to_target"].set_index("other")
    assert speed.loc["fedavg", "differences"] == "+3.000000 +1.000000 +3.000000"
    assert speed.loc["fedavg", "p_value"] == pytest.approx(0.072827, abs=1e-6)
    assert speed.loc["fedavg", "never_reached_target"] == 2
    assert speed.loc["fedavg", "verdict"] == "not resolved"
    for measure, family in table.groupby("measure"):
        if measure.endswith("_weighted"):  # these runs record no per-client numbers
            assert (family["family_size"] == 0).all() and family["p_holm"].isna().all()
            assert set(family["verdict_holm"]) == {"no shared seeds"}
            continue
        assert (family["family_size"] == 2).all()  # FedAvg and Local against FedPer
        assert family["p_holm"].tolist() == pytest.approx(holm(family["p_value"].tolist()))
        for _, row in family.iterrows():
            resolved = row["p_holm"] < 0.05
            assert row["verdict_holm"].startswith("resolved") == resolved, measure
    final = table[table["measure"] == "final"].set_index("other").loc["fedavg"]
    # -0.4 -0.3 -0.5: p 0.0202 alone; Local's final differences -0.1 +0.1 -0.1 give p 0.667,
    # so Holm: 2 * 0.0202 = 0.0404 < 0.05, still resolved
    assert final["p_holm"] == pytest.approx(2 * final["p_value"])
    assert final["verdict_holm"] == "resolved: FedPer ahead"


def test_tuned_keys_may_differ_within_a_pair_and_only_one_reference_per_group():
    from fedper.plot.compare import _pairs, parse_comparison
    from fedper.plot.runs import PlotError

    def table(*settings: dict) -> pd.DataFrame:
        return pd.DataFrame({"setting": [json.dumps(s, sort_keys=True) for s in settings]})

    fedper = {
        "algorithm": "fedper",
        "model.num_head_layers": 2,
        "finetune_epochs": 1,
        "seed_split": "a",
    }
    fedrep = {
        "algorithm": "fedrep",
        "model.num_head_layers": 1,
        "finetune_epochs": 1,
        "seed_split": "a",
    }
    other_split = {**fedrep, "seed_split": "b"}
    plain = parse_comparison("algorithm=fedper")
    assert list(_pairs(plain, table(fedper, fedrep, other_split))) == []
    tuned = parse_comparison("algorithm=fedper", ["model.num_head_layers"])
    pairs = [
        (ref, theirs) for _, ref, _, theirs in _pairs(tuned, table(fedper, fedrep, other_split))
    ]
    assert pairs == [(fedper, fedrep)]  # a key not tuned (seed_split) still keeps pairs apart
    twice = {**fedper, "model.num_head_layers": 3}
    with pytest.raises(PlotError, match="differ only in tuned keys"):
        list(_pairs(tuned, table(fedper, twice, fedrep)))
