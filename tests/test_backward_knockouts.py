"""benchmarks/backward_knockouts.py, the evidence for chapter 11's "Not the cache": every
variant's edits of fast/numba_tiles.py still apply (each exactly once), so the script cannot
time the unedited kernel under a variant's name after the kernel changes."""
from __future__ import annotations

from pathlib import Path

import pytest
from cases import script_module

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def knockouts():
    return script_module(ROOT / "benchmarks" / "backward_knockouts.py", "backward_knockouts")


def test_every_edit_applies_once(knockouts):
    source = (ROOT / "fast" / "numba_tiles.py").read_text()
    for name, (_, _, edits) in knockouts.VARIANTS.items():
        changed = knockouts.edited(source, edits)
        assert (changed != source) == bool(edits), name
        for old, new in edits:
            assert changed.count(new) >= 1 if new else old not in changed, name


def test_an_edit_that_no_longer_matches_stops_the_script(knockouts):
    with pytest.raises(SystemExit, match="matches 0 times"):
        knockouts.edited("x = 1\n", [("y = 2", "y = 3")])
    with pytest.raises(SystemExit, match="matches 2 times"):
        knockouts.edited("y = 2\ny = 2\n", [("y = 2", "y = 3")])
