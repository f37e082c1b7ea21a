"""The docs name only what exists: each name they set in backticks is in the code or the tree."""

import re

from conftest import ROOT

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "benchmarks/RESULTS.md"]
CODE = [*ROOT.glob("*.py"), *ROOT.glob("plumbing/*.py"), *ROOT.glob("benchmarks/*.py")]
ELSEWHERE = {"skimage.data.chelsea"}  # another project's names, which the docs cite


def test_every_name_the_docs_use_is_in_the_code_or_the_tree():
    code = "\n".join(path.read_text() for path in [*CODE, *ROOT.glob("tests/*.py")])
    tops = [top for top in ROOT.iterdir() if not top.name.startswith(".")]  # not .venv, .git
    paths = [path for top in tops for path in (top, *top.rglob("*"))]
    tree = {path.relative_to(ROOT).as_posix() for path in paths}
    missing = []
    for doc in DOCS:
        for name in set(re.findall(r"`([A-Za-z_][\w.]*)(?:\(\))?`", doc.read_text())):
            in_tree = any(path == name or path.endswith(f"/{name}") for path in tree)
            in_code = re.search(rf"\b{re.escape(name.split('.')[-1])}\b", code)
            if not (in_tree or in_code or name in ELSEWHERE):
                missing.append(f"{doc.name}: {name}")
    assert not missing


# "`name` in `file.py`", "`name` (`file.py`)", "`file.py`'s `name`": a name the docs place in a file
PLACED = [
    r"`(?P<name>[A-Za-z_][\w.]*)(?:\(\))?` (?:in|from) `(?P<file>[\w/]+\.py)`",
    r"`(?P<name>[A-Za-z_][\w.]*)(?:\(\))?` \(`(?P<file>[\w/]+\.py)`",
    r"`(?P<file>[\w/]+\.py)`'s `(?P<name>[A-Za-z_][\w.]*)(?:\(\))?`",
]


def defined_in(name, path):
    """Whether `path` defines `name` (its last part: a function, class, method or constant)."""
    last = re.escape(name.split(".")[-1])
    pattern = rf"^\s*(?:def |class ){last}\b|^\s*{last}(?::[^=]*)? =|^\s*{last} \|?="
    return re.search(pattern, path.read_text(), re.MULTILINE)


def test_a_name_the_docs_place_in_a_file_is_defined_there():
    misplaced = []
    for doc in DOCS:
        text = " ".join(doc.read_text().split())  # a phrase may wrap
        for pattern in PLACED:
            for found in re.finditer(pattern, text):
                path = ROOT / found["file"]
                if path.is_file() and not defined_in(found["name"], path):
                    misplaced.append(f"{doc.name}: {found['name']} in {found['file']}")
    assert not misplaced
