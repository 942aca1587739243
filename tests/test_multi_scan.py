"""Multi-direction scans: VMamba's cross-scan/merge, general multi scan/merge, the named schemes.

Oracles: VMamba's CrossScan/CrossMerge written with flatten / transpose / flip
(as the original does on (B, C, H, W)), explicit sums of per-direction scatters,
and coverage counts.
"""
from __future__ import annotations

import numpy as np
import pytest
from conftest import assert_close

from ssm_ref.vision import (
    CROSS_SCAN_ORDERS,
    SCHEMES,
    atrous_subgrids,
    cross_merge,
    cross_scan,
    from_sequence,
    multi_merge,
    multi_scan,
    scan_order,
    scan_scheme,
)

GRIDS = [(1, 1), (2, 3), (4, 4), (5, 3), (3, 7)]


def _vmamba_cross_scan_oracle(x):
    """VMamba's CrossScan with channels last: flatten, transpose-flatten, and both flipped."""
    B, H, W, C = x.shape
    row = x.reshape(B, H * W, C)
    col = x.transpose(0, 2, 1, 3).reshape(B, W * H, C)
    return np.stack([row, col, row[:, ::-1], col[:, ::-1]], axis=1)


def _vmamba_cross_merge_oracle(ys, H, W):
    """VMamba's CrossMerge: un-flip, then un-transpose the column direction as a W×H map."""
    B, _, L, C = ys.shape
    y = ys[:, 0] + ys[:, 2, ::-1]                     # row directions, (B, L, C)
    yc = ys[:, 1] + ys[:, 3, ::-1]                    # column directions in (W, H) layout
    y = y + yc.reshape(B, W, H, C).transpose(0, 2, 1, 3).reshape(B, L, C)
    return y.reshape(B, H, W, C)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("H,W", GRIDS)
def test_cross_scan_matches_vmamba(rng, H, W, dtype):
    x = rng.standard_normal((2, H, W, 3)).astype(dtype)
    xs = cross_scan(x)
    assert xs.shape == (2, 4, H * W, 3) and xs.dtype == dtype
    assert np.array_equal(xs, _vmamba_cross_scan_oracle(x))
    assert CROSS_SCAN_ORDERS == ("raster", "column", "raster_reversed", "column_reversed")


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("H,W", GRIDS)
def test_cross_merge_matches_vmamba_and_gives_4x(rng, H, W, dtype):
    x = rng.standard_normal((2, H, W, 3)).astype(dtype)
    y = cross_merge(cross_scan(x), H, W)
    assert y.shape == x.shape and y.dtype == dtype
    assert_close(y, (4 * x.astype(np.float64)).astype(dtype))
    ys = rng.standard_normal((2, 4, H * W, 3)).astype(dtype)
    assert_close(cross_merge(ys, H, W), _vmamba_cross_merge_oracle(ys, H, W))


@pytest.mark.parametrize("scheme", [s for s in SCHEMES if s != "es2d"])
@pytest.mark.parametrize("H,W", GRIDS)
def test_multi_merge_mean_recovers_x_for_full_schemes(rng, scheme, H, W):
    x = rng.standard_normal((2, H, W, 3))
    perms = scan_scheme(scheme, H, W)
    xs = multi_scan(x, perms)
    assert xs.shape == (2, len(perms), H * W, 3)
    assert_close(multi_merge(xs, perms, H, W, reduce="mean"), x)
    assert_close(multi_merge(xs, perms, H, W, reduce="sum"), len(perms) * x)


def test_multi_merge_sum_is_the_sum_of_scatters(rng):
    H, W = 3, 5
    perms = scan_scheme("omnidirectional", H, W)
    ys = rng.standard_normal((2, len(perms), H * W, 4))
    expected = sum(from_sequence(ys[:, k], perms[k], H, W) for k in range(len(perms)))
    assert_close(multi_merge(ys, perms, H, W), expected)
    # list input gives the same
    assert_close(multi_merge(list(ys.transpose(1, 0, 2, 3)), perms, H, W), expected)


def test_multi_scan_keeps_float32_and_accepts_tokens(rng):
    x = rng.standard_normal((1, 4, 4, 2)).astype(np.float32)
    perms = scan_scheme("vmamba_cross", 4, 4)
    xs = multi_scan(x, perms)
    assert xs.dtype == np.float32
    assert np.array_equal(multi_scan(x.reshape(1, 16, 2), perms), xs)
    assert multi_merge(xs, perms, 4, 4, reduce="mean").dtype == np.float32


# --------------------------------------------------------------------------- named schemes


def test_scheme_contents_and_metadata():
    H, W = 4, 5
    names = lambda ns: [scan_order(n, H, W).tolist() for n in ns]  # noqa: E731
    as_lists = lambda ps: [p.tolist() for p in ps]  # noqa: E731
    assert as_lists(scan_scheme("vim_bidirectional", H, W)) == names(["raster", "raster_reversed"])
    assert as_lists(scan_scheme("vmamba_cross", H, W)) == names(CROSS_SCAN_ORDERS)
    assert as_lists(scan_scheme("omnidirectional", H, W)) == names(
        list(CROSS_SCAN_ORDERS) + ["diagonal", "antidiagonal", "diagonal_reversed",
                                   "antidiagonal_reversed"])
    assert as_lists(scan_scheme("plainmamba", H, W)) == names(
        ["snake", "snake_column", "snake_reversed", "snake_column_reversed"])
    assert as_lists(scan_scheme("zigma", H, W)) == [
        scan_order("zigzag", H, W, index=k).tolist() for k in range(8)]
    loc = scan_scheme("localmamba", 6, 6, window=3)
    assert loc[0].tolist() == scan_order("local", 6, 6, window=3).tolist()
    assert loc[1].tolist() == scan_order("local", 6, 6, window=3, column_first=True).tolist()
    assert loc[2].tolist() == loc[0][::-1].tolist() and loc[3].tolist() == loc[1][::-1].tolist()
    assert SCHEMES["vim_bidirectional"].reduce == "mean"
    assert SCHEMES["vim_bidirectional"].parameters == "separate"
    assert SCHEMES["vmamba_cross"].reduce == "sum"
    assert SCHEMES["plainmamba"].parameters == "shared"
    assert "direction-aware" in SCHEMES["plainmamba"].notes
    for name, s in SCHEMES.items():
        assert s.name == name and "arXiv" in s.source
        assert [p.tolist() for p in s.perms(4, 4)] == as_lists(scan_scheme(name, 4, 4))


def test_plainmamba_directions_are_continuous():
    for perm in scan_scheme("plainmamba", 5, 6):
        i, j = np.divmod(perm, 6)
        assert np.all(np.abs(np.diff(i)) + np.abs(np.diff(j)) == 1)


@pytest.mark.parametrize("H,W,step", [(4, 4, 2), (8, 6, 2), (5, 7, 2), (3, 3, 2), (9, 9, 3), (1, 1, 2)])
def test_es2d_covers_each_cell_exactly_once(rng, H, W, step):
    perms = scan_scheme("es2d", H, W, step=step)
    cover = np.zeros(H * W, int)
    for p in perms:
        cover[p] += 1
    assert np.all(cover == 1)
    x = rng.standard_normal((2, H, W, 3))
    seqs = multi_scan(x, perms, stack=False)
    assert sum(s.shape[1] for s in seqs) == H * W
    assert_close(multi_merge(seqs, perms, H, W, reduce="sum"), x)   # no overlap: sum is placement
    assert_close(multi_merge(seqs, perms, H, W, reduce="mean"), x)


def test_es2d_even_grid_stacks_and_matches_subgrids(rng):
    x = rng.standard_normal((1, 4, 4, 2))
    perms = scan_scheme("es2d", 4, 4)
    xs = multi_scan(x, perms)
    assert xs.shape == (1, 4, 4, 2)
    assert [p.tolist() for p in perms] == [g.tolist() for g in atrous_subgrids(4, 4, 2)]
    assert_close(multi_merge(xs, perms, 4, 4), x)


def test_mean_with_uneven_coverage_divides_per_cell():
    H, W = 2, 2
    perms = [np.arange(4), np.array([0, 1])]
    ys = [np.ones((1, 4, 1)), np.ones((1, 2, 1))]
    y = multi_merge(ys, perms, H, W, reduce="mean")
    assert y[0, :, :, 0].tolist() == [[1.0, 1.0], [1.0, 1.0]]
    assert multi_merge(ys, perms, H, W)[0, :, :, 0].tolist() == [[2.0, 2.0], [1.0, 1.0]]


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("call,match", [
    (lambda: cross_scan(np.zeros((4, 4, 2))), "x"),
    (lambda: cross_merge(np.zeros((1, 3, 16, 2)), 4, 4), "ys"),
    (lambda: cross_merge(np.zeros((1, 4, 15, 2)), 4, 4), "ys.*16"),       # H·W mismatch
    (lambda: cross_merge(np.zeros((4, 16, 2)), 4, 4), "ys"),
    (lambda: multi_scan(np.zeros((1, 2, 2, 1)), []), "orders"),
    (lambda: multi_scan(np.zeros((1, 2, 2, 1)), np.arange(4)), "orders"),
    (lambda: multi_scan(np.zeros((1, 3, 3, 1)), scan_scheme("es2d", 3, 3)), "stack=False"),
    (lambda: multi_scan(np.zeros((1, 2, 2, 1)), [np.arange(5)]), "perm"),
    (lambda: multi_merge(np.zeros((1, 2, 4, 1)), [np.arange(4)], 2, 2), "ys"),
    (lambda: multi_merge(np.zeros((1, 1, 4, 1)), [np.arange(4)], 2, 2, reduce="max"), "reduce"),
    (lambda: multi_merge(np.zeros((1, 1, 4, 1)), [np.arange(4)], 2, 3), "orders.*6"),  # H·W mismatch
    (lambda: multi_merge(np.zeros((1, 1, 3, 1)), [np.arange(4)], 2, 2), "y"),
    (lambda: multi_merge([np.zeros((1, 4, 1))], [np.arange(4), np.arange(4)], 2, 2), "ys"),
    (lambda: scan_scheme("sweep", 4, 4), "name"),
    (lambda: scan_scheme("vmamba_cross", 4, 4, window=2), "window"),
    (lambda: scan_scheme("localmamba", 4, 4, window=0), "window"),
    (lambda: scan_scheme("es2d", 4, 4, step=0), "step"),
    (lambda: scan_scheme("es2d", 0, 4), "H"),
])
def test_bad_input_raises_valueerror_naming_the_argument(call, match):
    with pytest.raises(ValueError, match=match):
        call()
