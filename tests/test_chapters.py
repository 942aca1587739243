"""Every chapter of the book executes top to bottom (as `make book` does).

Chapters are MyST-Markdown notebooks read with jupytext and executed with nbclient,
so no .ipynb is ever written to disk.  The list comes from ``book/_toc.yml``, and a
second test checks that no chapter in ``tutorials/`` is left out of the book.
"""
from __future__ import annotations

import re

import pytest

from conftest import ROOT

TOC = ROOT / "book" / "_toc.yml"


def toc_chapters():
    """Chapter files named in the book's table of contents, in order."""
    names = re.findall(r"^\s*-\s*file:\s*tutorials/(\S+)\s*$", TOC.read_text(), re.M)
    return [ROOT / "tutorials" / f"{name}.md" for name in names]


def test_every_tutorial_is_in_the_toc():
    in_toc = {p.name for p in toc_chapters()}
    on_disk = {p.name for p in (ROOT / "tutorials").glob("*.md")}
    assert on_disk == in_toc, f"not in toc: {on_disk - in_toc}; missing files: {in_toc - on_disk}"


@pytest.mark.parametrize("chapter", toc_chapters(), ids=lambda p: p.stem)
def test_no_code_cell_is_nested_in_a_directive(chapter):
    """myst-nb runs only top-level code cells; one inside a ````{dropdown} would be
    executed by jupytext + nbclient here but silently not by the book build."""
    lines = chapter.read_text().splitlines()
    outer = re.compile(r"^(`{4,}|:{3,})\{")  # a 4-backtick or colon-fence directive opens
    opened = None
    for number, line in enumerate(lines, 1):
        if opened is None and outer.match(line):
            opened = outer.match(line).group(1)
        elif opened is not None and line.strip() == opened:
            opened = None
        elif opened is not None and line.startswith("```{code-cell}"):
            pytest.fail(f"{chapter.name}:{number}: code-cell nested in a directive")


@pytest.mark.slow
@pytest.mark.parametrize("chapter", toc_chapters(), ids=lambda p: p.stem)
def test_chapter_executes(chapter, tmp_path):
    jupytext = pytest.importorskip("jupytext")
    nbclient = pytest.importorskip("nbclient")
    nb = jupytext.read(chapter)
    client = nbclient.NotebookClient(
        nb, timeout=600, kernel_name="python3",
        resources={"metadata": {"path": str(chapter.parent)}},
    )
    client.execute()  # raises CellExecutionError with the failing cell's traceback
    n_code = sum(cell.cell_type == "code" for cell in nb.cells)
    assert n_code > 0, f"{chapter.name} has no code cells"
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
              if o.get("output_type") == "error"]
    assert not errors, f"{chapter.name}: {errors[0]['ename']}: {errors[0]['evalue']}"
