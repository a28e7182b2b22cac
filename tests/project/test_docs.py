"""README and docs/ stay findable: every relative link and anchor resolves, README stays a short front door that
reaches every manual page, and the architecture lists name only registered model types. The code blocks of the same
pages run in tests/project/test_docs_blocks.py.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT


PAGES = [ROOT / "README.md", ROOT / "CHANGELOG.md", ROOT / "CONTRIBUTING.md", *sorted((ROOT / "docs").glob("*.md"))]
LINKED_PAGES = [*PAGES, *sorted((ROOT / "benchmarks").glob("**/*.md"))]


# --- links -------------------------------------------------------------------------------------------------------


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation but `-` and `_` dropped, spaces to `-`."""
    text = heading.strip().lower().replace("`", "")
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    text = path.read_text(encoding="utf-8")
    text = re.sub(r"```.*?```", "", text, flags=re.S)
    anchors, seen = set(), {}
    for heading in re.findall(r"^#{1,6} (.+)$", text, flags=re.M):
        slug = _slug(heading)
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        anchors.add(slug if count == 0 else f"{slug}-{count}")
    anchors |= set(re.findall(r'<a id="([^"]+)"', text))
    return anchors


LINKS = [
    (page, target)
    for page in LINKED_PAGES
    for target in re.findall(r"\]\(([^)\s]+)\)", re.sub(r"```.*?```", "", page.read_text(), flags=re.S))
    if not target.startswith(("http://", "https://", "mailto:"))
]


@pytest.mark.parametrize("page, target", LINKS, ids=[f"{p.relative_to(ROOT)}->{t}" for p, t in LINKS])
def test_relative_links_resolve(page, target):
    file, _, anchor = target.partition("#")
    path = (page.parent / file).resolve() if file else page
    assert path.exists(), f"{page.relative_to(ROOT)} links to {target}, which does not exist"
    if anchor and path.suffix == ".md":
        assert anchor in _anchors(path), f"{page.relative_to(ROOT)} links to {target}: no such heading"


def test_readme_is_a_short_front_door():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.split("\n")) <= 200
    head = readme.split("\n")[:40]
    assert any("optimum-cli gatenorm prune --model smollm2-135m" in line for line in head)  # set-up command 1
    assert "bash .ci/test" in head  # set-up command 2
    for page in sorted((ROOT / "docs").glob("*.md")):  # every manual page is reachable from README
        if page.name != "DESIGN-transformers5.md":
            assert f"(docs/{page.name}" in readme, page.name


@pytest.mark.process
def test_the_architecture_lists_in_the_docs_name_only_registered_model_types():
    # The registry is the list (`optimum-cli gatenorm architectures`); a family added later needs no doc edit, but no
    # page may name a model type that is not registered, and the table's sample rows are the command's own rows.
    from optimum_gatenorm import supported_model_types

    readme_line = next(
        line for line in (ROOT / "README.md").read_text().split("\n") if line.startswith("Architectures:")
    )
    named = re.findall(r"`([a-z0-9_]+)`", readme_line)
    assert named and set(named) <= set(supported_model_types()), named
    page = (ROOT / "docs" / "architectures.md").read_text()
    sample = page.split("```text\n", 1)[1].split("```", 1)[0].strip().split("\n")
    live = (
        subprocess.run(
            [sys.executable, "-m", "optimum.commands.optimum_cli", "gatenorm", "architectures"],
            capture_output=True,
            text=True,
            check=True,
        )
        .stdout.strip()
        .split("\n")
    )
    assert sample[0] == live[0] and set(sample[1:]) <= set(live[1:]), set(sample) - set(live)
    assert len(live) == 1 + len(supported_model_types())


def test_the_licence_file_is_the_one_pyproject_declares():
    import re

    declared = re.search(r'^license = "([^"]+)"', (ROOT / "pyproject.toml").read_text(), re.MULTILINE)[1]
    text = (ROOT / "LICENSE").read_text()
    assert declared == "Apache-2.0"
    assert "Apache License" in text and "Version 2.0, January 2004" in text and "END OF TERMS AND CONDITIONS" in text
