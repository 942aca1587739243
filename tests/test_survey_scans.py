"""Tests of the survey's scans added as schemes: Vivim's spatiotemporal scan (Fig. 5b), the
hierarchical quadtree scan (Fig. 5h), the multi-head scan, and the block that runs it.

Oracles: index sequences written out by hand for small cases; np.argsort for inverses;
explicit loops for the multi-head gather; the selective scan of ssm_ref run head by head
for MultiHeadSS2D; central finite differences for its gradients.
"""
from __future__ import annotations

import numpy as np
import pytest

from conftest import assert_close
from test_vision_blocks import (
    TINY,
    _one_direction,
    _post_scan,
    _pre_scan,
    check_block,
    check_function,
    fd_check,
    perturb,
    perturb_block,
)

import ssm_ref.vision as sv
from ssm_ref.vision import (
    SCHEMES,
    MultiHeadSS2D,
    multi_head_merge,
    multi_head_scan,
    multi_merge,
    multi_scan,
    scan_order,
    scan_scheme,
)

NEW = ("vivim", "st_bidirectional", "hierarchical", "multihead")

# (scheme, options, H, W): H counts the stacked rows of all frames for the video schemes
CASES = [("vivim", {"frames": f}, f * h, w) for f, h, w in [(1, 3, 4), (2, 2, 2), (3, 2, 5), (4, 1, 1)]]
CASES += [("st_bidirectional", {"frames": f}, f * h, w) for f, h, w in [(2, 2, 2), (3, 3, 2)]]
CASES += [("hierarchical", {"levels": n}, H, W) for n, H, W in [(1, 3, 3), (3, 8, 8), (3, 5, 7),
                                                                (4, 6, 9)]]
CASES += [("multihead", {}, H, W) for H, W in [(1, 1), (3, 5), (4, 4)]]


def _id(case):
    name, opts, H, W = case
    return f"{name}-{'-'.join(f'{k}{v}' for k, v in opts.items())}-{H}x{W}"


# --------------------------------------------------------------------------- registry
def test_new_schemes_are_registered_like_the_others():
    for name in NEW:
        s = SCHEMES[name]
        assert s.name == name and "arXiv" in s.source and s.notes
        assert s.reduce in ("sum", "mean", "concat")
        assert s.parameters in ("separate", "shared", "per layer", "per head")
    entry = sv.SCAN_ORDERS["quadtree"]
    assert entry.options == {"depth": 2} and "Motion Mamba" in entry.source
    assert SCHEMES["vivim"].reduce == "mean" and SCHEMES["multihead"].reduce == "concat"


# --------------------------------------------------------------------------- bijection, merge o scan
@pytest.mark.parametrize("case", CASES, ids=_id)
def test_every_sequence_is_a_bijection_and_merge_inverts_scan(rng, case):
    name, opts, H, W = case
    perms = scan_scheme(name, H, W, **opts)
    for p in perms:
        assert p.dtype == np.int64 and np.array_equal(np.sort(p), np.arange(H * W))
        assert np.array_equal(sv.inverse(p), np.argsort(p))
    x = rng.standard_normal((2, H, W, 2 * len(perms)))
    xs = multi_scan(x, perms)
    assert_close(multi_merge(xs, perms, H, W, reduce="mean"), x)
    assert_close(multi_merge(xs, perms, H, W, reduce="sum"), len(perms) * x)
    # the multi-head merge inverts the multi-head scan exactly (entries are only moved)
    assert np.array_equal(multi_head_merge(multi_head_scan(x, perms), perms, H, W), x)


# --------------------------------------------------------------------------- facts by hand
def test_vivim_on_a_2x2x2_video():
    # frames t = 0, 1 of 2x2 stacked into a 4x2 grid: cell (t, i, j) has index 4t + 2i + j
    fwd, bwd, tmp = (p.tolist() for p in scan_scheme("vivim", 4, 2, frames=2))
    assert fwd == [0, 1, 2, 3, 4, 5, 6, 7]          # frame 0 raster, then frame 1
    assert bwd == [7, 6, 5, 4, 3, 2, 1, 0]
    assert tmp == [0, 4, 1, 5, 2, 6, 3, 7]          # each position through both frames
    st = [p.tolist() for p in scan_scheme("st_bidirectional", 4, 2, frames=2)]
    assert st == [fwd, bwd, tmp, [7, 3, 6, 2, 5, 1, 4, 0]]


def test_vivim_with_one_frame_is_vim_plus_raster():
    # frames=1 (the default) is an image: raster, raster reversed, raster
    perms = [p.tolist() for p in scan_scheme("vivim", 2, 3)]
    assert perms == [[0, 1, 2, 3, 4, 5], [5, 4, 3, 2, 1, 0], [0, 1, 2, 3, 4, 5]]


def test_quadtree_facts():
    assert scan_order("quadtree", 3, 4, depth=0).tolist() == list(range(12))  # raster
    # depth 1: 2x2 blocks row-major, row-major inside; partial blocks at the edges
    assert scan_order("quadtree", 4, 4, depth=1).tolist() == [0, 1, 4, 5, 2, 3, 6, 7,
                                                              8, 9, 12, 13, 10, 11, 14, 15]
    assert scan_order("quadtree", 3, 3, depth=1).tolist() == [0, 1, 3, 4, 2, 5, 6, 7, 8]
    assert np.array_equal(scan_order("quadtree", 6, 5, depth=1),
                          scan_order("local", 6, 5, window=2))
    assert np.array_equal(scan_order("quadtree", 8, 8, depth=3), scan_order("zorder", 8, 8))


@pytest.mark.parametrize("depth", [0, 1, 2, 3])
def test_quadtree_keeps_every_aligned_block_contiguous(depth):
    H, W = 8, 8
    pos = sv.inverse(scan_order("quadtree", H, W, depth=depth)).reshape(H, W)
    for k in range(depth + 1):
        s = 2 ** k
        for bi in range(0, H, s):
            for bj in range(0, W, s):
                t = np.sort(pos[bi:bi + s, bj:bj + s].ravel())
                assert t[-1] - t[0] == s * s - 1, (k, bi, bj)   # one run of s² positions


def test_hierarchical_levels_coarse_to_fine():
    perms = scan_scheme("hierarchical", 8, 8)      # levels=3: blocks of 4, 2, 1
    assert len(perms) == 3
    for p, d in zip(perms, (2, 1, 0)):
        assert np.array_equal(p, scan_order("quadtree", 8, 8, depth=d))
    assert perms[2].tolist() == list(range(64))
    assert len({tuple(p) for p in perms}) == 3    # three different sequences on 8x8


def test_multi_head_scan_by_hand():
    x = np.arange(8.0).reshape(1, 2, 2, 2)         # channel 0: 0 2 4 6, channel 1: 1 3 5 7
    orders = [scan_order("raster", 2, 2), scan_order("column", 2, 2)]
    xs = multi_head_scan(x, orders)
    assert xs.shape == (1, 2, 4, 1)
    assert xs[0, :, :, 0].tolist() == [[0.0, 2.0, 4.0, 6.0], [1.0, 5.0, 3.0, 7.0]]


def test_multi_head_scan_matches_loop_and_merge_is_its_adjoint(rng):
    H, W, K, c = 3, 4, 3, 2
    x = rng.standard_normal((2, H, W, K * c))
    orders = [scan_order(n, H, W) for n in ("hilbert", "snake", "spiral")]
    xs = multi_head_scan(x, orders)
    flat = x.reshape(2, H * W, K * c)
    for k in range(K):
        for t in range(H * W):
            assert np.array_equal(xs[:, k, t], flat[:, orders[k][t], k * c:(k + 1) * c])
    ys = rng.standard_normal(xs.shape)
    lhs = np.sum(xs * ys)
    rhs = np.sum(x * multi_head_merge(ys, orders, H, W))
    assert_close(lhs, rhs)
    # the plain multi-direction pair is an adjoint pair too (merge with reduce="sum")
    perms = scan_scheme("vivim", 2 * 2, 3, frames=2)
    x2 = rng.standard_normal((1, 4, 3, 2))
    y2 = rng.standard_normal((1, 3, 12, 2))
    assert_close(np.sum(multi_scan(x2, perms) * y2), np.sum(x2 * multi_merge(y2, perms, 4, 3)))


@pytest.mark.parametrize("call,match", [
    (lambda: scan_scheme("vivim", 5, 2, frames=2), "frames"),
    (lambda: scan_scheme("vivim", 4, 2, frames=0), "frames"),
    (lambda: scan_scheme("hierarchical", 4, 4, levels=0), "levels"),
    (lambda: scan_order("quadtree", 4, 4, depth=-1), "depth"),
    (lambda: multi_head_scan(np.zeros((1, 2, 2, 3)), scan_scheme("multihead", 2, 2)), "C = 3"),
    (lambda: multi_head_scan(np.zeros((1, 2, 2, 4)), [np.array([0, 1, 2])] * 4), "orders"),
    (lambda: multi_head_merge(np.zeros((1, 4, 5, 1)), scan_scheme("multihead", 2, 2), 2, 2), "ys"),
    (lambda: sv.SS2D(d_model=4, directions="multihead"), "multi-head"),
    (lambda: MultiHeadSS2D(d_model=3, d_state=2, expand=1), "d_inner"),
])
def test_bad_input_raises(call, match):
    with pytest.raises(ValueError, match=match):
        call()


# --------------------------------------------------------------------------- the block
def _multihead_oracle(sd, u, perms):
    """Head k: its channels gathered in order k, its own scan, scattered back; SS2D around it."""
    Bsz, H, W, _ = u.shape
    x, z = _pre_scan(sd, u)
    D, K = x.shape[-1], len(perms)
    c = D // K
    flat = x.reshape(Bsz, H * W, D)
    y = np.zeros((Bsz, H * W, D))
    for k, perm in enumerate(perms):
        hk = slice(k * c, (k + 1) * c)
        yk = _one_direction(sd, k, np.ascontiguousarray(flat[:, perm, hk].transpose(0, 2, 1)))
        y[:, perm, hk] = yk.transpose(0, 2, 1)
    return _post_scan(sd, y.reshape(Bsz, H, W, D), z)


@pytest.mark.parametrize("H,W", [(3, 4), (2, 2), (1, 5)])
def test_multihead_ss2d_matches_oracle(rng, H, W):
    m = MultiHeadSS2D(d_model=4, **TINY, seed=int(rng.integers(1 << 30)))
    perturb(m.params, rng)
    u = rng.standard_normal((2, H, W, 4))
    assert_close(m(u), _multihead_oracle(m.state_dict(), u, scan_scheme("multihead", H, W)))


def test_multihead_ss2d_gradients_and_orders(rng):
    m = MultiHeadSS2D(d_model=4, **TINY, directions=["hilbert", "snake"], seed=3)
    perturb(m.params, rng)
    assert m.n_directions == 2 and m.params["x_proj_weight"].shape == (2, 5, 4)
    u = rng.standard_normal((2, 3, 4, 4))
    assert_close(m(u), _multihead_oracle(m.state_dict(), u,
                                         [scan_order("hilbert", 3, 4), scan_order("snake", 3, 4)]))
    fd_check(m, u, rng, n_entries=2)


def test_tiny_vmamba_runs_the_new_schemes(rng):
    x = rng.standard_normal((2, 8, 4, 1))
    for directions, opts in [("multihead", {}), ("vivim", {"frames": 2}),
                             ("hierarchical", {"levels": 2})]:
        m = sv.build_model("vmamba", directions=directions, direction_options=opts,
                           img_size=(8, 4), patch_size=2, embed_dim=8, depth=1, n_classes=3)
        mixer = m.layers[0].self_attention
        assert isinstance(mixer, MultiHeadSS2D) == (directions == "multihead")
        logits = m.forward(x)
        assert logits.shape == (2, 3) and np.all(np.isfinite(logits))


# --------------------------------------------------------------------------- every array module
def test_multi_head_scan_and_merge_on_every_array_module(xp, rng):
    H, W = 3, 4
    orders = scan_scheme("multihead", H, W)
    x = rng.standard_normal((2, H, W, 8)).astype(np.float32)
    check_function(xp, multi_head_scan, [x, orders], host=(1,))
    ys = rng.standard_normal((2, 4, H * W, 2))
    check_function(xp, multi_head_merge, [ys, orders, H, W], host=(1,))


def test_multihead_vss_block_on_every_array_module(xp, rng):
    blk = perturb_block(sv.VSSBlock(d_model=4, mixer_cls=MultiHeadSS2D, seed=9, **TINY), rng)
    check_block(xp, blk, rng.standard_normal((2, 4, 3, 4)), rng)
