"""The documents stay true to the repository: links resolve, results are indexed, nothing
points outside the repository."""

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# the documents a user of a clone reads (README.md has tests of its own in test_packaging.py)
DOCUMENTS = sorted(
    [
        *(REPO / "docs").rglob("*.md"),
        *(REPO / "training").rglob("*.md"),
        *(REPO / "experiments").rglob("*.md"),
    ]
)
_LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def markdown_links(text: str) -> list[str]:
    """Targets of the inline links and images of a markdown text, code spans and blocks left out."""
    text = re.sub(r"```.*?```", "", text, flags=re.S)
    text = re.sub(r"`[^`\n]*`", "", text)
    return _LINK.findall(text)


def heading_anchors(text: str) -> set[str]:
    """GitHub's anchors of a markdown text's headings (lower case, punctuation dropped, spaces to hyphens)."""
    text = re.sub(r"```.*?```", "", text, flags=re.S)
    anchors = set()
    for title in re.findall(r"^#{1,6}\s+(.+?)\s*#*\s*$", text, flags=re.M):
        title = re.sub(r"[`*_]", "", title).strip().lower()
        anchors.add(re.sub(r"\s", "-", re.sub(r"[^\w\- ]", "", title)))
    return anchors


def test_heading_anchors_follow_github():
    text = "# Measured results\n## The paper's ablation (short budget)\n### `simseg train`: options\n"
    assert heading_anchors(text) == {"measured-results", "the-papers-ablation-short-budget", "simseg-train-options"}
    assert markdown_links("see [a](x.md#b) and ![i](p.png) but not `[c](d)`") == ["x.md#b", "p.png"]


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: p.relative_to(REPO).as_posix())
def test_relative_links_resolve_to_files_and_headings(document):
    text = document.read_text(encoding="utf-8")
    broken = []
    for target in markdown_links(text):
        if re.match(r"[a-z]+:", target):  # http(s), mailto: not checked here
            continue
        path, _, anchor = target.partition("#")
        linked = (document.parent / path).resolve() if path else document
        if not linked.exists():
            broken.append(f"{target} (no such file)")
        elif anchor and linked.suffix == ".md" and anchor not in heading_anchors(linked.read_text(encoding="utf-8")):
            broken.append(f"{target} (no such heading)")
    assert not broken, f"{document.relative_to(REPO)}: broken links {broken}"


def test_no_document_points_outside_the_repository():
    offenders = []
    for path in [REPO / "README.md", *DOCUMENTS, *(REPO / "docs" / "results").iterdir()]:
        if path.suffix in (".md", ".json", ".yaml") and "../shared" in path.read_text(encoding="utf-8"):
            offenders.append(path.relative_to(REPO).as_posix())
    assert not offenders, f"documents that name ../shared (cite data by what it is and where to get it): {offenders}"


def test_every_results_file_is_indexed():
    index = (REPO / "docs" / "results" / "README.md").read_text(encoding="utf-8")
    named = set(re.findall(r"[\w.-]+\.(?:json|png|md|yaml)", index))
    # setup2-k0.json ... setup2-k6.json is named as a range
    named |= {f"setup2-k{k}.json" for k in (0, 1, 2, 3, 6) if "setup2-k0.json" in named}
    files = {p.name for p in (REPO / "docs" / "results").iterdir() if p.name != "README.md"}
    assert not files - named, f"docs/results files the index does not name: {sorted(files - named)}"
    listed = set(re.findall(r"`([\w.-]+\.(?:json|png|md|yaml))`", index.partition("## Files")[2]))
    assert not listed - files, f"the index's file table names missing files: {sorted(listed - files)}"
