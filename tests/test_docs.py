"""The documents stay true to the tree: the README's Layout table lists real paths and every package of `rest/`,
the README stays a user's document of about 300 lines, and relative links in the documents point to files."""

import re
from pathlib import Path
from urllib.parse import unquote

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
MAX_README_LINES = 320
TOP_LEVEL_FOLDERS = ["train", "infer", "evaluation", "configs", "weights", "tests", "docs", "assets"]
LINKED_DOCS = [
    README,
    *sorted((ROOT / "docs").glob("*.md")),
    ROOT / "weights" / "rest-tiny" / "README.md",
    ROOT / "weights" / "rest-motion" / "README.md",
]

LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)|!\[[^\]]*\]\(([^)\s]+)\)")  # markdown links and images
CODE_SPAN = re.compile(r"`([^`]+)`")


def layout_paths(text: str) -> list[str]:
    """The paths in the first column of the table under the README's "## Layout" heading."""
    match = re.search(r"^## Layout\s*$(.*?)(?=^## |\Z)", text, flags=re.M | re.S)
    assert match, 'README.md has no "## Layout" section'
    rows = [line for line in match.group(1).splitlines() if line.startswith("|")]
    assert len(rows) > 2, "the Layout section has no table"
    paths = []
    for row in rows[2:]:  # after the header and the |---| line
        first_cell = row.strip("|").split("|")[0]
        cell_paths = CODE_SPAN.findall(first_cell)
        assert cell_paths, f"Layout row without a `path` in its first column: {row}"
        paths.extend(p.strip() for p in cell_paths)
    return paths


def listed_path_exists(path: str) -> bool:
    """A listed `rest/x/` is satisfied by the package rest/x/ or the module rest/x.py (before and after a module
    becomes a package, as rest/media.py -> rest/media/)."""
    target = ROOT / path.rstrip("/")
    if target.exists():
        return True
    return path.endswith("/") and target.with_suffix(".py").is_file()


def test_readme_is_short():
    lines = README.read_text(encoding="utf-8").count("\n")
    assert lines <= MAX_README_LINES, (
        f"README.md has {lines} lines (at most {MAX_README_LINES}); move run histories to docs/experiments.md and "
        "the design to docs/design.md"
    )


def test_layout_paths_exist():
    missing = [p for p in layout_paths(README.read_text(encoding="utf-8")) if not listed_path_exists(p)]
    assert not missing, f"README.md's Layout table lists paths that do not exist: {missing}"


def test_layout_lists_every_package_and_top_level_folder():
    listed = {p.rstrip("/") for p in layout_paths(README.read_text(encoding="utf-8"))}
    packages = sorted(f"rest/{d.name}" for d in (ROOT / "rest").iterdir() if (d / "__init__.py").is_file())
    assert packages, "found no packages under rest/"
    unlisted = [p for p in ["rest", *packages, *TOP_LEVEL_FOLDERS] if p not in listed]
    assert not unlisted, f"README.md's Layout table does not list: {unlisted} (add a row `path/` | what)"


def test_listed_path_accepts_module_or_package():
    # The rule the Layout test relies on, checked on the real tree: `rest/config/` is satisfied by rest/config.py.
    assert listed_path_exists("rest/config/")
    assert not listed_path_exists("rest/no_such_thing/")
    assert not listed_path_exists("rest/config.txt")


@pytest.mark.parametrize("doc", LINKED_DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(doc: Path):
    assert doc.is_file(), f"{doc.relative_to(ROOT)} is missing"
    text = doc.read_text(encoding="utf-8")
    text = re.sub(r"^```.*?^```", "", text, flags=re.M | re.S)  # links inside code blocks are not links
    broken = []
    for match in LINK.finditer(text):
        target = match.group(1) or match.group(2)
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, flags=re.I) or target.startswith("#"):
            continue  # http(s), mailto, in-page anchors
        path = unquote(target.split("#", 1)[0])
        if not (doc.parent / path).exists():
            broken.append(target)
    assert not broken, f"{doc.relative_to(ROOT)} links to files that do not exist: {broken}"
