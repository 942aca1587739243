"""benchmarks/backward_knockouts.py, the evidence for chapter 11's "Not the cache": every
variant's edits of fast/numba_tiles.py still apply (each exactly once), so the script cannot
time the unedited kernel under a variant's name after the kernel changes."""
from __future__ import annotations

import numpy as np
import pytest
from cases import script_module
from conftest import ROOT


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


def test_extra_files_exist(knockouts):
    for target, file in knockouts.EXTRA_FILES.values():
        assert (ROOT / "benchmarks" / file).is_file(), file
        assert target.endswith(".py")


def test_reverse_sweep_in_llvm_ir_against_a_float64_loop():
    """The LLVM IR variant's reverse sweep for 4 of 8 states, against the update rule
    written out in NumPy in float64 (written, then added to: pA, pB)."""
    from numba import njit

    reverse_ir = script_module(ROOT / "benchmarks" / "_reverse_ir.py", "_reverse_ir")
    reverse_block4 = reverse_ir.reverse_block4

    @njit
    def run(*args):
        reverse_block4(*args)

    rng = np.random.default_rng(0)
    L, N, W = 21, 8, 16

    def arr(*shape):
        return rng.standard_normal(shape).astype(np.float32)

    dt, bu, dy = arr(L + 3, W), arr(L + 3, W), arr(L + 3, W)
    a, g, sdA = arr(N + 1, W), arr(N + 1, W), arr(N + 1, W)
    abar, ah, dBl = arr(L + 1, N, W), arr(L + 1, N, W), arr(L + 1, N, W)
    pA, pB, B_row, C_row = arr(L + 3, W), arr(L + 3, W), arr(L, N), arr(L, N)
    want = {k: v.astype(np.float64) for k, v in dict(g=g, sdA=sdA, dBl=dBl, pA=pA, pB=pB).items()}
    for add in (False, True):
        n0 = 4 if add else 0
        if not add:
            want["pA"][:L] = 0
            want["pB"][:L] = 0
        for t in range(L - 1, -1, -1):
            for n in range(n0, n0 + 4):
                gn = want["g"][n] + dy[t] * C_row[t, n]
                ga = gn * ah[t, n]
                want["sdA"][n] += ga * dt[t]
                want["dBl"][t, n] += gn * bu[t]
                want["g"][n] = gn * abar[t, n]
                want["pA"][t] += ga * a[n]
                want["pB"][t] += gn * B_row[t, n]
        run(dt, bu, dy, a, g, sdA, abar, ah, dBl, pA, pB, B_row, C_row, L, n0, add)
    for name, got in dict(g=g, sdA=sdA, dBl=dBl, pA=pA, pB=pB).items():
        np.testing.assert_allclose(got, want[name], rtol=1e-4, atol=1e-4, err_msg=name)
