"""benchmarks/tried_layouts.py, the evidence for chapter 11's "Two layouts that did not pay":
its shuffle tree sums rows, and its stand-alone kernels compute the scan they are timed as
(checked against ssm_ref at a small size, with a partial last tile of 16 steps)."""
from __future__ import annotations

import numpy as np
import pytest

import ssm_ref
from cases import script_module
from conftest import ROOT, assert_close
from fast.bench.scan import make_inputs


@pytest.fixture(scope="module")
def tried():
    return script_module(ROOT / "benchmarks" / "tried_layouts.py", "tried_layouts")


def test_tree_masks_sum_each_row(tried):
    """The transpose-and-add tree, simulated with NumPy lane by lane, gives the row sums."""
    levels, final = tried._tree()
    tile = np.random.default_rng(0).standard_normal((16, 16))
    vecs = list(tile)
    for lo, hi in levels:
        vecs = [np.concatenate([x, y])[lo] + np.concatenate([x, y])[hi]
                for x, y in zip(vecs[0::2], vecs[1::2])]
    assert len(levels) == 4 and len(vecs) == 1
    np.testing.assert_allclose(vecs[0][final], tile.sum(axis=1), rtol=1e-12)


def test_kernels_compute_the_scan(tried):
    kw = make_inputs(1, 32, 37, 16)  # 37 = 2 * 16 + 5 steps: a partial last tile
    want = ssm_ref.selective_scan(**kw)
    out = np.empty_like(kw["u"])
    args = (kw["u"], kw["delta"], kw["A"], np.ascontiguousarray(kw["B"][0].T),
            np.ascontiguousarray(kw["C"][0].T), kw["D"], kw["z"], kw["delta_bias"], out)
    terms = tried.exp2_terms(np.float32)
    for mode in (0, 2):  # the lane sum, the tile sums (mode 1 is wrong on purpose)
        out[:] = np.nan
        tried.rows_kernel(*args, 2, mode, terms)
        assert_close(out, want, "backend", dtype=np.float32, err_msg=f"rows, mode {mode}")
    out[:] = np.nan
    tried.lanes_kernel(*args, 2, terms)
    assert_close(out, want, "backend", dtype=np.float32, err_msg="channel lanes")
