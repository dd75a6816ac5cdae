"""The committed results: packed runs only, every table redrawn from them, docs quoting only table numbers."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pandas as pd
import pytest

from fedper.plot import read_packed
from fedper.plot.redraw import read_manifest, redraw

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "docs" / "results"
MANIFEST = RESULTS / "tables.yaml"
TABLE_SUFFIXES = (".md", ".csv")


def committed(suffixes: tuple[str, ...]) -> set[Path]:
    return {p.relative_to(RESULTS) for p in RESULTS.rglob("*") if p.suffix in suffixes}


def test_every_committed_table_is_redrawn_from_its_packed_runs(tmp_path: Path) -> None:
    """Markdown byte for byte; CSV value for value (the last digits of a p-value may move with scipy)."""
    drawn = {p.relative_to(tmp_path) for p in redraw(MANIFEST, tmp_path, figures=False)}
    assert drawn == committed(TABLE_SUFFIXES), "every committed table, and only those, has an entry in tables.yaml"  # fmt: skip
    for table in sorted(drawn):
        mine, theirs = tmp_path / table, RESULTS / table
        if table.suffix == ".md":
            assert mine.read_text() == theirs.read_text(), f"{table} differs: python -m fedper.plot redraw"  # fmt: skip
        else:
            pd.testing.assert_frame_equal(pd.read_csv(mine), pd.read_csv(theirs), rtol=1e-9, obj=str(table))  # fmt: skip


def test_each_committed_figure_is_a_png_and_a_pdf_of_a_manifest_figure() -> None:
    pngs = {p.with_suffix("") for p in committed((".png",))}
    assert pngs == {p.with_suffix("") for p in committed((".pdf",))}
    stems = {
        arg for entry in read_manifest(MANIFEST) for arg in entry.args if not arg.startswith("-")
    }
    for figure in pngs:
        assert any(figure.name.startswith(f"{stem}_") for stem in stems), figure


def test_packed_files_are_the_manifest_runs_and_hold_no_machine_path() -> None:
    entries = read_manifest(MANIFEST)
    used = {run for entry in entries for run in [*entry.runs, *entry.reused_from.values()]}
    assert {p.relative_to(RESULTS).as_posix() for p in RESULTS.rglob("*.jsonl.gz")} == used
    for packed in sorted(used):
        for run in read_packed(RESULTS / packed):
            assert not any(key in run["config"] for key in ("data_dir", "state_dir", "resume"))
            assert not re.search(r'"(/|~/|[A-Za-z]:\\\\)', json.dumps(run)), f"{packed}: {run['run']} holds a machine path"  # fmt: skip
            assert isinstance(run["code_version"]["commit"], str) and "versions" in run


def test_no_run_folder_is_tracked_under_docs_results() -> None:
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout: nothing is tracked")
    tracked = subprocess.run(
        ["git", "ls-files", "docs/results"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    run_files = [f for f in tracked if "/runs/" in f or Path(f).name in ("results.json", "run_id")]
    assert run_files == []
    ignored = subprocess.run(
        ["git", "check-ignore", "-q", "docs/results/family/runs/seed=1/results.json"], cwd=ROOT
    )
    assert ignored.returncode == 0, ".gitignore must keep run folders under docs/results out"
