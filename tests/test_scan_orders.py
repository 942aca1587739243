"""Scan orders: bijections, the facts of the original papers/code, continuity, gather/scatter, statistics.

Oracles: facts hard-coded from the originals (issue 5), formulas of the papers
written out here, an independent classic Hilbert d2xy, an independent Morton
code, and re-creations of LocalMamba's pad/view/permute and EfficientVMamba's
slicing on an index grid.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import assert_close

from ssm_ref.vision import (
    SCAN_ORDERS,
    SCAN_ORDERS_3D,
    atrous_subgrids,
    draw_scan_order,
    from_sequence,
    inverse,
    locality_stats,
    scan_order,
    scan_order_3d,
    to_sequence,
)

SIZES = [(1, 1), (1, 5), (5, 1), (2, 2), (3, 4), (4, 3), (5, 7), (8, 8), (16, 16)]

# every registered order, plus the option values worth covering
ORDER_CASES = [(name, {}) for name in SCAN_ORDERS if name not in ("zigzag", "local", "atrous")]
ORDER_CASES += [("zigzag", {"index": k}) for k in range(8)]
ORDER_CASES += [("local", {"window": w}) for w in (1, 2, 3, 7)]
ORDER_CASES += [("local", {"window": 2, "column_first": True}), ("local_column", {"window": 3})]
ORDER_CASES += [("atrous", {"step": s}) for s in (1, 2, 3)]


def _case_id(case):
    name, opts = case
    return name + "".join(f"-{k}{v}" for k, v in opts.items())


def _coords(perm, W):
    return np.divmod(np.asarray(perm), W)


# --------------------------------------------------------------------------- bijection


@pytest.mark.parametrize("H,W", SIZES)
@pytest.mark.parametrize("case", ORDER_CASES, ids=_case_id)
def test_every_order_is_a_bijection_with_inverse(case, H, W):
    name, opts = case
    perm = scan_order(name, H, W, **opts)
    assert perm.dtype == np.int64
    assert perm.shape == (H * W,)
    assert np.array_equal(np.sort(perm), np.arange(H * W))
    inv = inverse(perm)
    assert np.array_equal(inv, np.argsort(perm))          # independent oracle
    assert np.array_equal(perm[inv], np.arange(H * W))
    assert np.array_equal(inv[perm], np.arange(H * W))


def test_registry_entries_document_their_source():
    for name, entry in SCAN_ORDERS.items():
        assert entry.name == name
        assert "arXiv" in entry.source or "Hilbert" in entry.source or "Morton" in entry.source
        assert entry.description
        assert entry.continuity in ("4-neighbour", "4-neighbour, <=1 diagonal", "jumps")


@pytest.mark.parametrize("name", ["raster", "hilbert", "spiral", "zigzag"])
def test_reverse_option_reads_backwards(name):
    assert np.array_equal(scan_order(name, 5, 3, reverse=True), scan_order(name, 5, 3)[::-1])


# --------------------------------------------------------------------------- facts (3x4 unless said)

FACTS_3x4 = {
    "raster": list(range(12)),
    "column": [0, 4, 8, 1, 5, 9, 2, 6, 10, 3, 7, 11],
    "snake": [0, 1, 2, 3, 7, 6, 5, 4, 8, 9, 10, 11],
    "snake_column": [0, 4, 8, 9, 5, 1, 2, 6, 10, 11, 7, 3],
    "spiral": [0, 1, 2, 3, 7, 11, 10, 9, 8, 4, 5, 6],
}


@pytest.mark.parametrize("name", sorted(FACTS_3x4))
def test_facts_3x4(name):
    assert scan_order(name, 3, 4).tolist() == FACTS_3x4[name]


@pytest.mark.parametrize("name", ["raster", "column", "snake", "snake_column", "spiral"])
def test_reversed_names_are_flips(name):
    rev = "spiral_reversed" if name == "spiral" else name + "_reversed"
    assert scan_order(rev, 3, 4).tolist() == FACTS_3x4[name][::-1]


def test_zigzag_facts_4x4():
    z = lambda k: scan_order("zigzag", 4, 4, index=k).tolist()  # noqa: E731
    assert z(0)[:8] == [0, 1, 2, 3, 7, 6, 5, 4]
    assert z(1)[:6] == [0, 4, 8, 12, 13, 9]
    assert z(7)[:6] == [15, 11, 7, 3, 2, 6]


@pytest.mark.parametrize("H,W", [(3, 4), (4, 4), (5, 2), (1, 3)])
def test_zigzag_starts_at_its_corner_and_alternates_row_column(H, W):
    corners = [0, W - 1, (H - 1) * W, H * W - 1]
    for k in range(8):
        perm = scan_order("zigzag", H, W, index=k)
        assert perm[0] == corners[k // 2]
        i, j = _coords(perm, W)
        if H > 1 and W > 1:
            if k % 2 == 0:   # row snake: the first W steps stay in one row
                assert len(set(i[:W].tolist())) == 1
            else:            # column snake: the first H steps stay in one column
                assert len(set(j[:H].tolist())) == 1


def test_diagonal_fact_3x3():
    assert scan_order("diagonal", 3, 3).tolist() == [0, 4, 8, 1, 5, 6, 2, 3, 7]


@pytest.mark.parametrize("H,W", [(3, 4), (5, 7), (4, 3), (1, 4), (6, 1)])
def test_diagonal_and_antidiagonal_follow_rs_mamba_formula(H, W):
    diag = scan_order("diagonal", H, W)
    anti = scan_order("antidiagonal", H, W)
    for w in range(W):
        for h in range(H):
            assert diag[w * H + h] == h * W + (h + w) % W
            assert anti[w * H + h] == h * W + (w - h) % W


def test_radial_hand_computed_3x3():
    # centre; then E, S, W, N (distance 1, clockwise from east); then SE, SW, NW, NE
    assert scan_order("radial", 3, 3).tolist() == [4, 5, 7, 3, 1, 8, 6, 0, 2]


@pytest.mark.parametrize("H,W", [(4, 4), (5, 7), (6, 3)])
def test_radial_distances_never_decrease(H, W):
    i, j = _coords(scan_order("radial", H, W), W)
    d = np.hypot(i - (H - 1) / 2, j - (W - 1) / 2)
    assert np.all(np.diff(d) >= -1e-12)


def test_local_fact_4x4_window2():
    assert scan_order("local", 4, 4, window=2).tolist() == [
        0, 1, 4, 5, 2, 3, 6, 7, 8, 9, 12, 13, 10, 11, 14, 15]


def _localmamba_oracle(H, W, w, column_first):
    """LocalMamba's local_scan on an index grid: pad with -1, view, permute, drop the padding."""
    Hg, Wg = -(-H // w), -(-W // w)
    grid = np.full((Hg * w, Wg * w), -1)
    grid[:H, :W] = np.arange(H * W).reshape(H, W)
    blocks = grid.reshape(Hg, w, Wg, w)
    order = (2, 0, 3, 1) if column_first else (0, 2, 1, 3)
    seq = blocks.transpose(order).ravel()
    return seq[seq >= 0]


@pytest.mark.parametrize("H,W,w", [(4, 4, 2), (3, 5, 2), (7, 7, 3), (14, 14, 7), (5, 2, 4), (1, 6, 4)])
@pytest.mark.parametrize("column_first", [False, True])
def test_local_equals_localmamba_padded_order_without_padding(H, W, w, column_first):
    perm = scan_order("local", H, W, window=w, column_first=column_first)
    assert np.array_equal(perm, _localmamba_oracle(H, W, w, column_first))
    if column_first:
        assert np.array_equal(scan_order("local_column", H, W, window=w), perm)


def test_atrous_fact_4x4_step2():
    assert scan_order("atrous", 4, 4, step=2).tolist() == [
        0, 2, 8, 10, 4, 12, 6, 14, 1, 3, 9, 11, 5, 13, 7, 15]


@pytest.mark.parametrize("H,W", [(4, 4), (6, 4), (5, 7), (3, 3), (2, 5)])
def test_atrous_step2_equals_efficientvmamba_slicing(H, W):
    grid = np.arange(H * W).reshape(H, W)
    expected = [grid[::2, ::2].ravel(), grid.T[::2, 1::2].ravel(),
                grid[::2, 1::2].ravel(), grid.T[1::2, 1::2].ravel()]
    got = atrous_subgrids(H, W, 2)
    assert len(got) == 4
    for g, e in zip(got, expected):
        assert np.array_equal(g, e)
    assert np.array_equal(scan_order("atrous", H, W), np.concatenate(expected))


@pytest.mark.parametrize("H,W,s", [(6, 6, 3), (7, 5, 3), (2, 2, 3), (9, 4, 4)])
def test_atrous_subgrids_partition_the_grid_by_residues(H, W, s):
    subs = atrous_subgrids(H, W, s)
    assert len(subs) == s * s
    assert np.array_equal(np.sort(np.concatenate(subs)), np.arange(H * W))
    for k, g in enumerate(subs):
        b, a = divmod(k, s)
        i, j = _coords(g, W)
        assert np.all(i % s == a) and np.all(j % s == b)


# --------------------------------------------------------------------------- zorder and hilbert


def _morton(i, j):
    """Independent Morton code: interleave the binary strings (row bit first)."""
    bi, bj = format(i, "016b"), format(j, "016b")
    return int("".join(r + c for r, c in zip(bi, bj)), 2)


def test_zorder_fact_4x4():
    assert scan_order("zorder", 4, 4).tolist() == [
        0, 1, 4, 5, 2, 3, 6, 7, 8, 9, 12, 13, 10, 11, 14, 15]


@pytest.mark.parametrize("H,W", [(4, 4), (5, 7), (8, 3), (1, 9)])
def test_zorder_sorts_morton_codes(H, W):
    i, j = _coords(scan_order("zorder", H, W), W)
    codes = [_morton(int(a), int(b)) for a, b in zip(i, j)]
    assert codes == sorted(codes)


def _classic_hilbert_d2xy(n, d):
    """Classic Hilbert curve index -> (x, y) on an n×n grid, n a power of two."""
    x = y = 0
    s, t = 1, d
    while s < n:
        rx = 1 & (t // 2)
        ry = 1 & (t ^ rx)
        if ry == 0:
            if rx == 1:
                x, y = s - 1 - x, s - 1 - y
            x, y = y, x
        x, y = x + s * rx, y + s * ry
        t //= 4
        s *= 2
    return x, y


@pytest.mark.parametrize("n", [1, 2, 4, 8, 16, 32])
def test_hilbert_is_the_classic_curve_on_powers_of_two(n):
    expected = []
    for d in range(n * n):
        x, y = _classic_hilbert_d2xy(n, d)
        expected.append(y * n + x)           # x = column, y = row
    assert scan_order("hilbert", n, n).tolist() == expected


def test_hilbert_on_every_size_up_to_20():
    seen_diagonal = False
    for H in range(1, 21):
        for W in range(1, 21):
            perm = scan_order("hilbert", H, W)
            assert np.array_equal(np.sort(perm), np.arange(H * W))
            i, j = _coords(perm, W)
            di, dj = np.abs(np.diff(i)), np.abs(np.diff(j))
            assert np.all(np.maximum(di, dj) <= 1), (H, W)        # neighbours (8-connected)
            n_diag = int(np.sum((di == 1) & (dj == 1)))
            assert n_diag <= 1, (H, W)
            long_side, short_side = max(H, W), min(H, W)
            if not (long_side % 2 == 1 and short_side % 2 == 0):
                assert n_diag == 0, (H, W)                         # continuous
            seen_diagonal |= n_diag == 1
    assert seen_diagonal   # odd × even does need the one diagonal step somewhere


# --------------------------------------------------------------------------- continuity

CONTINUOUS = ["snake", "snake_column", "snake_reversed", "snake_column_reversed",
              "spiral", "spiral_reversed"] + [f"zigzag{k}" for k in range(8)]


@pytest.mark.parametrize("name", CONTINUOUS)
def test_continuous_orders_step_to_4_neighbours(name):
    for H in range(1, 10):
        for W in range(1, 10):
            if name.startswith("zigzag"):
                perm = scan_order("zigzag", H, W, index=int(name[-1]))
            else:
                perm = scan_order(name, H, W)
            i, j = _coords(perm, W)
            steps = np.abs(np.diff(i)) + np.abs(np.diff(j))
            assert np.all(steps == 1), (name, H, W)


def test_continuity_flags_in_registry_are_true():
    for name, entry in SCAN_ORDERS.items():
        if entry.continuity == "4-neighbour":
            perm = scan_order(name, 6, 7)
            i, j = _coords(perm, 7)
            assert np.all(np.abs(np.diff(i)) + np.abs(np.diff(j)) == 1), name


# --------------------------------------------------------------------------- gather / scatter


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("name", ["raster", "column", "hilbert", "spiral", "local"])
def test_to_sequence_from_sequence_round_trip(rng, dtype, name):
    B, H, W, C = 2, 5, 3, 4
    x = rng.standard_normal((B, H, W, C)).astype(dtype)
    perm = scan_order(name, H, W)
    seq = to_sequence(x, perm)
    assert seq.shape == (B, H * W, C) and seq.dtype == dtype
    # explicit loop oracle for the gather
    flat = x.reshape(B, H * W, C)
    for t in range(H * W):
        assert np.array_equal(seq[:, t], flat[:, perm[t]])
    back = from_sequence(seq, perm, H, W)
    assert back.dtype == dtype
    assert np.array_equal(back, x)
    # tokens given as (B, L, C) work the same
    assert np.array_equal(to_sequence(flat, perm), seq)


@pytest.mark.parametrize("name", ["raster", "spiral", "hilbert"])
def test_from_sequence_of_a_full_order_against_a_loop(rng, name):
    """A full order takes the gather by the inverse order: each cell perm[t] gets y[:, t]
    (a loop over t), on a y that to_sequence did not make."""
    H, W = 4, 6
    perm = scan_order(name, H, W)
    y = rng.standard_normal((3, H * W, 2))
    out = from_sequence(y, perm, H, W)
    assert out.shape == (3, H, W, 2) and out.flags.c_contiguous
    flat = out.reshape(3, H * W, 2)
    for t in range(H * W):
        assert np.array_equal(flat[:, perm[t]], y[:, t])


def test_from_sequence_of_part_of_the_grid_leaves_zeros(rng):
    H, W = 4, 4
    sub = atrous_subgrids(H, W, 2)[1]
    y = rng.standard_normal((1, sub.size, 2))
    out = from_sequence(y, sub, H, W).reshape(1, H * W, 2)
    mask = np.zeros(H * W, bool)
    mask[sub] = True
    assert np.array_equal(out[:, sub], y)
    assert np.all(out[:, ~mask] == 0)


# --------------------------------------------------------------------------- video


@pytest.mark.parametrize("T,H,W", [(1, 1, 1), (3, 2, 2), (2, 3, 4), (4, 1, 5)])
def test_video_orders(T, H, W):
    L = T * H * W
    sf = scan_order_3d("spatial_first", T, H, W)
    tf = scan_order_3d("temporal_first", T, H, W)
    assert np.array_equal(sf, np.arange(L))
    for p in range(H * W):
        for t in range(T):
            assert tf[p * T + t] == t * H * W + p            # seq[p·T + t] = x[t, p]
    assert np.array_equal(scan_order_3d("spatial_first_reversed", T, H, W), sf[::-1])
    assert np.array_equal(scan_order_3d("temporal_first_reversed", T, H, W), tf[::-1])
    for name in SCAN_ORDERS_3D:
        assert np.array_equal(np.sort(scan_order_3d(name, T, H, W)), np.arange(L))


def test_video_with_a_snake_inside_each_frame():
    perm = scan_order_3d("spatial_first", 2, 3, 4, spatial="snake")
    assert perm[:12].tolist() == FACTS_3x4["snake"]
    assert perm[12:].tolist() == [12 + p for p in FACTS_3x4["snake"]]


# --------------------------------------------------------------------------- locality statistics


def test_locality_stats_raster_2x3_by_hand():
    s = locality_stats(scan_order("raster", 2, 3), 2, 3)
    # steps: 1, 1, jump (0,2)->(1,0), 1, 1
    assert s["n_steps"] == 5 and s["n_adjacent_pairs"] == 7
    assert_close(np.float64(s["mean_jump_manhattan"]), np.float64(7 / 5))
    assert s["max_jump_manhattan"] == 3
    assert_close(np.float64(s["mean_jump_euclidean"]), np.float64((4 + math.sqrt(5)) / 5))
    assert_close(np.float64(s["max_jump_euclidean"]), np.float64(math.sqrt(5)))
    assert_close(np.float64(s["neighbour_step_fraction"]), np.float64(4 / 5))
    assert s["diagonal_steps"] == 0
    # 4 horizontal pairs 1 apart, 3 vertical pairs 3 apart
    assert_close(np.float64(s["mean_neighbour_seq_distance"]), np.float64(13 / 7))
    assert s["max_neighbour_seq_distance"] == 3
    assert s["median_neighbour_seq_distance"] == 1.0
    assert s["neighbour_fraction_near"] == 1.0 and s["near"] == 4
    assert_close(np.float64(locality_stats(scan_order("raster", 2, 3), 2, 3, near=2)
                            ["neighbour_fraction_near"]), np.float64(4 / 7))


def test_locality_stats_snake_2x2_by_hand():
    s = locality_stats(scan_order("snake", 2, 2), 2, 2)   # 0, 1, 3, 2
    assert s["neighbour_step_fraction"] == 1.0
    assert s["mean_jump_manhattan"] == 1.0
    # pairs (0,1):1, (2,3):1, (0,2):3, (1,3):1
    assert s["mean_neighbour_seq_distance"] == 1.5


def test_locality_stats_hilbert_diagonal_counted():
    s = locality_stats(scan_order("hilbert", 4, 5), 4, 5)  # long side 5 odd, short 4 even
    assert s["diagonal_steps"] == 1
    assert_close(np.float64(s["max_jump_euclidean"]), np.float64(math.sqrt(2)))


def test_locality_stats_1x1_is_nan():
    s = locality_stats(np.array([0]), 1, 1)
    assert math.isnan(s["mean_jump_euclidean"]) and s["n_steps"] == 0


def test_draw_scan_order_marks_jumps():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.collections import LineCollection

    ax = draw_scan_order(scan_order("raster", 3, 4), 3, 4, title="raster")
    cols = [c for c in ax.collections if isinstance(c, LineCollection)]
    n_segments = sorted(len(c.get_segments()) for c in cols)
    assert n_segments == [2, 9]     # 2 row-end jumps, 9 neighbour steps
    assert ax.get_title() == "raster"
    plt.close(ax.figure)


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("call,exc,match", [
    (lambda: scan_order("peano", 3, 3), ValueError, "name"),
    (lambda: scan_order("raster", 0, 3), ValueError, "H"),
    (lambda: scan_order("raster", 3, -1), ValueError, "W"),
    (lambda: scan_order("raster", 3.0, 3), TypeError, "H"),
    (lambda: scan_order("local", 4, 4, window=0), ValueError, "window"),
    (lambda: scan_order("local", 4, 4, window=2.5), TypeError, "window"),
    (lambda: scan_order("atrous", 4, 4, step=0), ValueError, "step"),
    (lambda: scan_order("zigzag", 4, 4, index=8), ValueError, "index"),
    (lambda: scan_order("raster", 4, 4, window=2), ValueError, "window.*raster"),
    (lambda: scan_order("local", 4, 4, column_first="yes"), TypeError, "column_first"),
    (lambda: scan_order_3d("diagonal_first", 2, 2, 2), ValueError, "name"),
    (lambda: scan_order_3d("spatial_first", 0, 2, 2), ValueError, "T"),
    (lambda: atrous_subgrids(4, 4, step=-2), ValueError, "step"),
    (lambda: inverse([0, 2, 2]), ValueError, "perm"),
    (lambda: inverse([1, 2, 3]), ValueError, "perm"),
    (lambda: inverse(np.array([0.0, 1.0])), TypeError, "perm"),
    (lambda: inverse(np.zeros((2, 2), int)), ValueError, "perm"),
    (lambda: to_sequence(np.zeros((4, 4)), np.arange(16)), ValueError, "x"),
    (lambda: to_sequence(np.zeros((1, 2, 2, 1)), np.arange(5)), ValueError, "perm"),
    (lambda: from_sequence(np.zeros((1, 5, 1)), np.arange(4), 2, 2), ValueError, "y"),
    (lambda: from_sequence(np.zeros((1, 4)), np.arange(4), 2, 2), ValueError, "y"),
    (lambda: from_sequence(np.zeros((1, 4, 1)), [0, 1, 2, 7], 2, 2), ValueError, "perm"),
    (lambda: locality_stats(np.arange(5), 2, 3), ValueError, "perm"),
    (lambda: locality_stats(np.arange(6), 2, 3, near=0), ValueError, "near"),
])
def test_bad_input_raises_naming_the_argument(call, exc, match):
    with pytest.raises(exc, match=match):
        call()
