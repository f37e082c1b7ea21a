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
