"""What the package index shows: the README (the long description) links only to the
declared repository, every link it makes exists here, and the licence is declared and shipped.

Fast on purpose: pyproject.toml is parsed, no wheel is built (``pip wheel . --no-deps``
and ``twine check --strict`` are the manual check)."""

import re
import sys
from pathlib import Path
from urllib.parse import unquote

import pytest

from test_docs import heading_anchors, markdown_links

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    tomli = pytest.importorskip("tomli", reason="Python 3.10 needs tomli to read pyproject.toml")
    tomllib = tomli

REPO = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
README = (REPO / "README.md").read_text(encoding="utf-8")


def repository_url() -> str:
    url = PROJECT["urls"]["Repository"]
    assert re.fullmatch(r"https://github\.com/[\w.-]+/[\w.-]+", url), url
    return url


def repository_path(link: str) -> tuple[str, str] | None:
    """The repository path (and anchor) a link to the declared repository names, else None."""
    owner_name = repository_url().removeprefix("https://github.com/")
    pages = rf"https://github\.com/{re.escape(owner_name)}/(?:blob|tree)/main/(.+)"
    raw = rf"https://raw\.githubusercontent\.com/{re.escape(owner_name)}/main/(.+)"
    found = re.fullmatch(pages, link) or re.fullmatch(raw, link)
    if not found:
        return None
    path, _, anchor = found.group(1).partition("#")
    return unquote(path), anchor


def test_project_urls_point_at_the_repository():
    base = repository_url()
    for name in ("Documentation", "Issues"):
        assert PROJECT["urls"][name].startswith(base + "/"), name


def test_readme_is_the_long_description_and_fits():
    assert PROJECT["readme"] == "README.md"
    assert len(README) <= 15_000, f"README.md is {len(README)} characters; the guide must stay within 15,000"


def test_readme_links_are_absolute_and_name_files_of_this_repository():
    links = markdown_links(README)
    assert links, "no links found: the parser is broken"
    problems = []
    for link in links:
        if not re.match(r"https?://", link):
            problems.append(f"{link}: relative, breaks on the package index")
            continue
        if "github.com/napari-simseg" not in link and "githubusercontent.com/napari-simseg" not in link:
            continue  # another site (napari.org, the data's sources)
        located = repository_path(link)
        if located is None:
            problems.append(f"{link}: not under {repository_url()}/blob/main/ or its raw URL")
            continue
        path, anchor = located
        target = REPO / path
        if not target.exists():
            problems.append(f"{link}: {path} does not exist")
        elif anchor and target.suffix == ".md" and anchor not in heading_anchors(target.read_text(encoding="utf-8")):
            problems.append(f"{link}: {path} has no heading #{anchor}")
    assert not problems, "\n".join(problems)


def test_readme_images_come_from_the_raw_repository():
    images = re.findall(r"!\[[^\]]*\]\(([^)\s]+)\)", README)
    assert images, "the README shows the screenshot"
    for image in images:
        assert image.startswith("https://raw.githubusercontent.com/"), image
        assert (REPO / repository_path(image)[0]).is_file(), image


def test_licence_is_declared_as_spdx_and_shipped():
    assert PROJECT["license"] == "BSD-3-Clause"  # an SPDX expression, not the deprecated table
    assert PROJECT["license-files"] == ["LICENSE"]
    text = (REPO / "LICENSE").read_text(encoding="utf-8")
    assert text.startswith("BSD 3-Clause License") and "Copyright (c) 2026, napari-simseg developers" in text
    assert not any(c.startswith("License ::") for c in PROJECT.get("classifiers", []))  # refused with SPDX
    requires = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["build-system"]["requires"]
    setuptools = next(r for r in requires if r.startswith("setuptools"))
    minimum = re.search(r">=\s*(\d+)", setuptools)
    assert minimum and int(minimum.group(1)) >= 77, "license-files and SPDX licences need setuptools>=77"
