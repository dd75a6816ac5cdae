"""`python -m fedper.plot pack`: one compact file per sweep, from one clean commit, that the tables redraw from."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from helpers.plot_results import config, write_run

from fedper.plot import pack_sweep, plot_runs, read_packed
from fedper.plot.runs import PlotError

ROOT = Path(__file__).resolve().parents[1]
CLEAN = {"code_version": {"commit": "a" * 40, "dirty": False}, "versions": {"torch": "2.14.1"}}
ACCURACIES = {1: [0.2, 0.5, 0.7], 2: [0.3, 0.6, 0.8], 3: [0.4, 0.7, 0.9]}


def sweep(root: Path, header: dict | None = None, changed: dict | None = None) -> Path:
    """FedPer and FedAvg, seeds 1-3, 3 rounds; `changed` gives some runs another header."""
    for algorithm in ("fedper", "fedavg"):
        for seed, accuracies in ACCURACIES.items():
            name = f"algorithm={algorithm},seed={seed}"
            shift = 0.0 if algorithm == "fedper" else -0.1
            write_run(
                root / name,
                config(algorithm, seed, num_rounds=3),
                [a + shift for a in accuracies],
                [a + shift - 0.05 for a in accuracies],
                header=(changed or {}).get(name, header or CLEAN),
                accuracy_weighted=[a + shift + 0.01 for a in accuracies],
            )
    return root


def run_pack(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "fedper.plot", "pack", *args],
        cwd=ROOT, capture_output=True, text=True, timeout=120, env=os.environ.copy(),
    )  # fmt: skip


def strings(value: object) -> list[str]:
    """Every string in a JSON value, keys included."""
    if isinstance(value, dict):
        return [s for key, item in value.items() for s in [key, *strings(item)]]
    if isinstance(value, list):
        return [s for item in value for s in strings(item)]
    return [value] if isinstance(value, str) else []


def test_a_packed_sweep_holds_settings_versions_and_rounds_but_no_machine_path(tmp_path: Path) -> None:  # fmt: skip
    folder = sweep(tmp_path / "sweep")
    packed = pack_sweep(folder, tmp_path / "runs.jsonl.gz")
    assert (packed.runs, packed.commits, packed.legacy) == (6, ("a" * 40,), False)
    runs = read_packed(packed.path)
    assert [run["run"] for run in runs] == sorted(run["run"] for run in runs)
    first = runs[0]
    assert first["code_version"] == CLEAN["code_version"] and first["versions"] == CLEAN["versions"]
    assert "data_dir" not in first["config"] and "state_dir" not in first["config"]
    assert first["config"]["learning_rate"] == 0.01 and first["legacy"] is False
    assert [r["round"] for r in first["rounds"]] == [1, 2, 3]
    assert not [s for run in runs for s in strings(run) if s.startswith("/")]
    # pandas reads it as it is: a row per run
    table = pd.read_json(packed.path, lines=True)
    assert len(table) == 6 and {"run_id", "config", "rounds", "code_version"} <= set(table.columns)


def test_tables_from_a_packed_file_are_the_tables_from_its_folder(tmp_path: Path) -> None:
    folder = sweep(tmp_path / "sweep")
    packed = pack_sweep(folder, tmp_path / "runs.jsonl.gz").path
    options = {"figure": "fig", "compare": ["algorithm=fedper"], "target": 0.6}
    from_folder = plot_runs([folder], tmp_path / "from_folder", **options)
    from_file = plot_runs([packed], tmp_path / "from_file", **options)
    assert [p.name for p in from_file.tables] == [p.name for p in from_folder.tables]
    assert len(from_file.tables) == 4  # summary and differences, CSV and Markdown
    for mine, theirs in zip(from_file.tables, from_folder.tables, strict=True):
        assert mine.read_bytes() == theirs.read_bytes(), mine.name


def test_packing_the_same_runs_gives_the_same_bytes_and_never_overwrites_by_accident(
    tmp_path: Path,
) -> None:
    folder = sweep(tmp_path / "sweep")
    first = pack_sweep(folder, tmp_path / "runs.jsonl.gz").path.read_bytes()
    with pytest.raises(PlotError, match="exists: give another name, or --force"):
        pack_sweep(folder, tmp_path / "runs.jsonl.gz")
    again = pack_sweep(folder, tmp_path / "runs.jsonl.gz", force=True).path.read_bytes()
    assert again == first
    with pytest.raises(PlotError, match=r"name the packed file \*\.jsonl\.gz"):
        pack_sweep(folder, tmp_path / "runs.json")


@pytest.mark.parametrize("problem", ["dirty", "two commits", "no commit"])
def test_runs_not_from_one_clean_commit_are_refused_in_one_line(tmp_path: Path, problem: str) -> None:  # fmt: skip
    other = {
        "dirty": {"code_version": {"commit": "a" * 40, "dirty": True}},
        "two commits": {"code_version": {"commit": "b" * 40, "dirty": False}},
        "no commit": {},
    }[problem]
    folder = sweep(tmp_path / "sweep", changed={"algorithm=fedavg,seed=2": other})
    out = tmp_path / "runs.jsonl.gz"
    result = run_pack(str(folder), "--out", str(out))
    assert result.returncode == 2 and not out.exists()
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr
    assert lines[0].startswith(f"fedper.plot pack: error: {folder}: ")
    assert "rerun them from one clean commit, or pass --legacy" in lines[0]
    if problem == "two commits":
        assert "the runs come from 2 commits (aaaaaaaaaa: 5, bbbbbbbbbb: 1)" in lines[0]
    else:
        assert "1 of 6 runs come from an uncommitted tree or name no commit" in lines[0]
    # --legacy packs them anyway, and every line says so
    result = run_pack(str(folder), "--out", str(out), "--legacy")
    assert result.returncode == 0, result.stderr
    assert "legacy: not one clean commit" in result.stdout
    with gzip.open(out, "rt") as lines_of_file:
        assert all(json.loads(line)["legacy"] is True for line in lines_of_file)


def test_runs_reused_from_another_table_are_named_in_both_tables(tmp_path: Path) -> None:
    figure = pack_sweep(sweep(tmp_path / "figure"), tmp_path / "figure.jsonl.gz").path
    family = sweep(tmp_path / "family")  # the same run ids: runs copied from the figure
    output = plot_runs(
        [family], tmp_path / "out", compare=["algorithm=fedper"],
        reused_from=[f"figure 2={figure}"],
    )  # fmt: skip
    assert set(output.summary["reused_from"]) == {"figure 2 (3 of 3 runs)"}
    assert set(output.differences["reused_from"]) == {"both: figure 2 (3 of 3 runs)"}
    markdown = (tmp_path / "out" / "summary.md").read_text()
    assert "| runs reused from |" in markdown and "same runs (same run ids)" in markdown


def test_redraw_names_a_bad_manifest_in_one_line(tmp_path: Path) -> None:
    manifest = tmp_path / "tables.yaml"
    manifest.write_text("plots:\n  - out: figure\n")  # no runs
    result = subprocess.run(
        [sys.executable, "-m", "fedper.plot", "redraw", str(manifest)],
        cwd=ROOT, capture_output=True, text=True, timeout=120, env=os.environ.copy(),
    )  # fmt: skip
    assert result.returncode == 2 and "Traceback" not in result.stderr
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(f"fedper.plot redraw: error: {manifest}: not a manifest of `plots` entries")  # fmt: skip


def test_redraw_draws_each_entry_from_its_packed_runs(tmp_path: Path) -> None:
    from fedper.plot.redraw import redraw

    pack_sweep(sweep(tmp_path / "sweep"), tmp_path / "results" / "fig" / "fig_runs.jsonl.gz")
    manifest = tmp_path / "results" / "tables.yaml"
    manifest.write_text(
        "plots:\n  - runs: [fig/fig_runs.jsonl.gz]\n    out: fig\n"
        "    args: [--figure, fig, --compare, algorithm=fedper, --target, '0.6']\n"
    )
    written = redraw(manifest, figures=False)
    assert sorted(p.name for p in written) == [
        "fig_differences.csv", "fig_differences.md", "fig_summary.csv", "fig_summary.md",
    ]  # fmt: skip
    assert "round to 0.60" in (tmp_path / "results" / "fig" / "fig_summary.md").read_text()
