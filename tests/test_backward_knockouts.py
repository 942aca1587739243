"""benchmarks/backward_knockouts.py, the evidence for chapter 11's "Not the cache": every
variant's edits of fast/numba_tiles.py still apply (each exactly once), so the script cannot
time the unedited kernel under a variant's name after the kernel changes."""
from __future__ import annotations

import numpy as np
import pytest
from cases import script_module
from conftest import ROOT

from fast.numba_cpu import _FMK


@pytest.fixture(scope="module")
def knockouts():
    return script_module(ROOT / "benchmarks" / "backward_knockouts.py", "backward_knockouts")


def test_every_edit_applies_once(knockouts):
    source = (ROOT / "fast" / "numba_tiles.py").read_text()
    assert source.count(knockouts.SHORT_ROWS) == 1  # the kernels for short rows come after it
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


def test_edits_leave_the_short_rows_kernels_alone(knockouts):
    source = "y = 2\n" + knockouts.SHORT_ROWS + "y = 2\n"
    assert knockouts.edited(source, [("y = 2", "y = 3")]) == (
        "y = 3\n" + knockouts.SHORT_ROWS + "y = 2\n")


def test_extra_files_exist(knockouts):
    for target, file in knockouts.EXTRA_FILES.values():
        assert (ROOT / "benchmarks" / file).is_file(), file
        assert target.endswith(".py")


@pytest.fixture(scope="module")
def sweeps_ir():
    return script_module(ROOT / "benchmarks" / "_sweeps_ir.py", "_sweeps_ir")


#: the tile kernels' fast-math flags: a variant's IR is inlined into a kernel compiled with
#: them, and Numba gives every float operation without flags of its own these flags
KERNEL_FLAGS = _FMK


def _arrays(seed):
    rng = np.random.default_rng(seed)
    return lambda *shape: rng.standard_normal(shape).astype(np.float32)


def test_reverse_sweep_in_llvm_ir_against_a_float64_loop(sweeps_ir):
    """The LLVM IR variant's reverse sweep for 4 of 8 states, against the update rule
    written out in NumPy in float64 (written, then added to: pA, pB)."""
    from numba import njit
    reverse_block4 = sweeps_ir.reverse_block4

    @njit(fastmath=KERNEL_FLAGS)
    def run(*args):
        reverse_block4(*args)

    L, N, W = 21, 8, 16
    arr = _arrays(0)
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


@pytest.mark.parametrize("k", [4, 8])
def test_forward_sweep_in_llvm_ir_against_a_float64_loop(sweeps_ir, k):
    """The LLVM IR variant's forward sweep (k states at once, 2k of 16), called from a
    function with the kernels' fast-math flags, against the recurrence and the records
    written out in NumPy in float64 with np.exp2.  Without flags of its own, its
    exponential's ``x - (s - shifter)`` was folded to nonsense under "reassoc"."""
    from numba import njit

    from fast._fastexp import exp2_terms
    block = getattr(sweeps_ir, f"forward_block{k}")

    @njit(fastmath=KERNEL_FLAGS)
    def run(*args):
        block(*args)

    L, N, W = 21, 2 * k, 16
    arr = _arrays(1)
    dt, bu, dy = np.abs(arr(L + 3, W)), arr(L + 3, W), arr(L + 3, W)
    a2 = -3 * np.abs(arr(N + 1, W))  # dt a2 in [-125, 0]: fast_exp2_normal's range
    h, y = arr(N + 1, W), arr(L + 3, W)
    abar, ah, dCl = arr(L + 1, N, W), arr(L + 1, N, W), arr(L + 1, N, W)
    B_row, C_row = arr(L, N), arr(L, N)
    terms = np.array(exp2_terms(np.float32), np.float32)
    got = dict(h=h, y=y, abar=abar, ah=ah, dCl=dCl)
    want = {name: v.astype(np.float64) for name, v in got.items()}
    for add in (False, True):
        n0 = k if add else 0
        if not add:
            want["y"][:L] = 0
        for t in range(L):
            for n in range(n0, n0 + k):
                e = np.exp2(dt[t].astype(np.float64) * a2[n])
                ahv = e * want["h"][n]
                hv = ahv + bu[t] * B_row[t, n]
                want["abar"][t, n], want["ah"][t, n], want["h"][n] = e, ahv, hv
                want["dCl"][t, n] += dy[t] * hv
                want["y"][t] += hv * C_row[t, n]
        run(dt, bu, dy, a2, h, y, abar, ah, dCl, B_row, C_row, terms, L, n0, add)
    for name, v in got.items():
        np.testing.assert_allclose(v, want[name], rtol=1e-4, atol=1e-4, err_msg=name)


def test_only_with_no_matching_variant_says_so():
    import subprocess
    import sys
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "backward_knockouts.py"),
                          "--only", "no-such-variant"], capture_output=True, text=True)
    assert run.returncode == 1
    assert "no variant's name contains ['no-such-variant']" in run.stderr
