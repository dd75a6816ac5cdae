"""README.md and docs/: every relative link and image resolves, and the front page stays short."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
README_MAX_LINES = 200

# [text](target) and ![alt](target); the target ends at the first space or closing bracket
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
FENCE = re.compile(r"^(```|~~~).*?^\1", re.M | re.S)
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.M)


def without_code(text: str) -> str:
    """The page with fenced code blocks and inline code removed (links there are not links)."""
    return re.sub(r"`[^`\n]*`", "", FENCE.sub("", text))


def anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link keeps its text
    return re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """Every heading anchor of a page, numbered as GitHub numbers repeated ones."""
    seen: dict[str, int] = {}
    found = set()
    for heading in HEADING.findall(FENCE.sub("", page.read_text(encoding="utf-8"))):
        slug = anchor(heading)
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        found.add(slug if count == 0 else f"{slug}-{count}")
    return found


def relative_links(page: Path) -> list[str]:
    """The links and images of a page that point inside the repository."""
    targets = LINK.findall(without_code(page.read_text(encoding="utf-8")))
    return [t for t in targets if not re.match(r"[a-z][a-z0-9+.-]*:", t)]


def test_anchor_follows_github_rules():
    assert anchor("The Deployment Engine's cost") == "the-deployment-engines-cost"
    assert anchor("run_figures.sh") == "run_figuressh"
    assert anchor("FLICKR-AES (figures 7 and 8)") == "flickr-aes-figures-7-and-8"
    assert anchor("`results.json`") == "resultsjson"


def test_links_in_code_are_ignored(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("[a](one.md) `[b](two.md)`\n```\n[c](three.md)\n```\n![d](four.png)\n")
    assert relative_links(page) == ["one.md", "four.png"]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_and_images_resolve(page: Path):
    broken = []
    for target in relative_links(page):
        path, _, fragment = target.partition("#")
        destination = (page.parent / path).resolve() if path else page
        if not destination.exists():
            broken.append(f"{target}: no such file")
        elif fragment and destination.suffix == ".md" and fragment not in anchors(destination):
            broken.append(f"{target}: no heading #{fragment} in {destination.name}")
    assert not broken, f"{page.relative_to(ROOT)}: " + "; ".join(broken)


def test_every_docs_page_is_linked_from_the_readme():
    linked = {(ROOT / t.partition("#")[0]).resolve() for t in relative_links(ROOT / "README.md")}
    unlinked = [p.name for p in PAGES[1:] if p.resolve() not in linked]
    assert not unlinked, f"docs pages the README does not link: {unlinked}"


def test_readme_is_a_front_page():
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines"
    assert "make test" in "\n".join(lines)


def test_the_scale_table_is_the_committed_scale_benchmark():
    import json

    from fedper.bench.scale import scale_markdown

    report = json.loads((ROOT / "docs" / "bench" / "scale.json").read_text())
    assert [size["num_clients"] for size in report["sizes"]] == [10, 100, 1000, 10000]
    assert scale_markdown(report) in (ROOT / "docs" / "performance.md").read_text()
