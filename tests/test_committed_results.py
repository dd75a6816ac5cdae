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


DOC_PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^(```|~~~).*?^\1", re.M | re.S)
HEADING = re.compile(r"^#{1,6} ", re.M)
PLUS_MINUS = re.compile(r"(?<![\d.])-?\d+(?:\.\d+)? ± \d+(?:\.\d+)?")
INTERVAL = re.compile(r"\[-?\d+\.\d+, -?\d+\.\d+\]")
LINK = re.compile(r"\]\(([^)\s]+)\)")


def normalized(text: str) -> str:
    """Minus signs as `-`, and `+` before a number dropped: `+0.017` and `0.017` read alike."""
    return re.sub(r"\+(?=\d)", "", text.replace("−", "-"))


def quoted_numbers(text: str) -> list[str]:
    """Every `0.975 ± 0.014`-style number and every `[-0.024, +0.017]` interval, normalized."""
    text = normalized(text)
    return PLUS_MINUS.findall(text) + INTERVAL.findall(text)


def tables_linked(page: Path, section: str) -> str:
    """The text of every Markdown table in the docs/results folders the section links into."""
    folders = set()
    for target in LINK.findall(section):
        path = (page.parent / target.split("#")[0]).resolve()
        if path.is_relative_to(RESULTS) and path.exists():
            folders.add(path if path.is_dir() else path.parent)
    return "\n".join(
        normalized(t.read_text()) for f in sorted(folders) for t in sorted(f.glob("*.md"))
    )


def unsupported_numbers(page: Path) -> list[str]:
    """The quoted numbers of a page's sections that its linked tables do not hold.

    The rule: a page is cut into sections at its headings (code blocks left out). Every
    number written as `mean ± half-width` and every `[low, high]` interval in a section must
    appear, as written (a `+` sign optional, a `-` sign required), in a Markdown table of a
    docs/results/ folder that the section links into (a link to a table, a figure or the
    folder itself). A section that quotes such numbers without linking any results folder
    is reported too. Numbers the tables do not print (averages across rows, single values)
    are not checked.
    """
    problems = []
    for section in HEADING.split(FENCE.sub("", page.read_text(encoding="utf-8"))):
        numbers = quoted_numbers(section)
        if not numbers:
            continue
        tables = tables_linked(page, section)
        title = section.strip().splitlines()[0][:60]
        if not tables:
            problems.append(f"{page.name}, '{title}': quotes {numbers[0]} but links no docs/results table")  # fmt: skip
        for number in numbers:
            if not re.search(r"(?<![\d.\-])" + re.escape(number) + r"(?!\d)", tables):
                problems.append(f"{page.name}, '{title}': {number} is in no table it links")
    return problems


def test_numbers_quoted_in_the_docs_are_in_the_committed_tables() -> None:
    assert [p for page in DOC_PAGES for p in unsupported_numbers(page)] == []
    quoted = [n for page in DOC_PAGES for n in quoted_numbers(page.read_text(encoding="utf-8"))]
    assert len(quoted) > 50  # the results pages do quote the tables


def test_the_docs_rule_catches_a_number_that_drifted(tmp_path: Path, monkeypatch) -> None:
    results = tmp_path / "docs" / "results" / "figure"
    results.mkdir(parents=True)
    (results / "summary.md").write_text("| FedPer | 0.975 ± 0.014 | [-0.024, +0.017] |\n")
    monkeypatch.setattr(f"{__name__}.RESULTS", tmp_path / "docs" / "results")
    page = tmp_path / "docs" / "page.md"
    page.write_text(
        "# Intro\n\nNo numbers here.\n\n## Results\n\nFedPer [table](results/figure/summary.md): "
        "0.975 ± 0.014, interval [-0.024, 0.017], and 0.975 ± 0.041.\n\n"
        "## Elsewhere\n\nA stray -0.024 ± 0.017.\n\n```\n0.5 ± 0.1 in code is not prose\n```\n"
    )
    assert unsupported_numbers(page) == [
        "page.md, 'Results': 0.975 ± 0.041 is in no table it links",
        "page.md, 'Elsewhere': quotes -0.024 ± 0.017 but links no docs/results table",
        "page.md, 'Elsewhere': -0.024 ± 0.017 is in no table it links",
    ]
