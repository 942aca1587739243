"""Tests of ssm_ref.vision.analysis: effective receptive fields and hidden-attention maps.

Oracles: central finite differences for the receptive field (the function under
test uses the hand-derived backward passes); for the attention maps, the
selective scan itself run on one-hot inputs (the column of the hidden attention
it produces is an independent computation of the same numbers).
"""
from __future__ import annotations

import numpy as np
import pytest

from cases import scan_case
from conftest import assert_close, numerical_gradient

import ssm_ref as sr
from ssm_ref.vision import (
    effective_receptive_field,
    erf_high_contribution_ratio,
    hidden_attention_map,
    inverse,
    mamba_attention_map,
    multi_direction_attention_maps,
    scan_order,
    to_sequence,
    from_sequence,
    ss2d_attention_maps,
    vim_attention_maps,
    atrous_subgrids,
)


# --------------------------------------------------------------------------- a tiny grid block
class RasterMamba:
    """A grid block for the tests: tokens -> scan order -> Mamba block -> back to the grid."""

    def __init__(self, d_model=3, order="snake", H=3, W=4, seed=0):
        self.block = sr.MambaBlock(d_model=d_model, d_state=2, expand=1, seed=seed)
        self.block.params["dt_proj.bias"] = self.block.params["dt_proj.bias"] + 2.0
        self.perm = scan_order(order, H, W)
        self.H, self.W = H, W

    def forward(self, x, return_cache=False):
        seq = to_sequence(x, self.perm)  # (B, L, C)
        y, cache = self.block.forward(seq, return_cache=True)
        out = from_sequence(y, self.perm, self.H, self.W)  # (B, H, W, C)
        return (out, cache) if return_cache else out

    def backward(self, dout, cache):
        dseq = to_sequence(dout, self.perm)
        dseq_in, grads = self.block.backward(dseq, cache)
        return from_sequence(dseq_in, self.perm, self.H, self.W), grads


def fd_erf(f, x, i0, j0, relu=False, eps=1e-6):
    """ERF by central differences of sum_b sum_c [relu] f(x)[b, i0, j0, c], unnormalised."""
    act = (lambda v: np.maximum(v, 0.0)) if relu else (lambda v: v)
    g = numerical_gradient(lambda v: act(f(v)[:, i0, j0]).sum(), x.copy(), eps=eps)
    return np.abs(g).sum(axis=3).mean(axis=0)


# --------------------------------------------------------------------------- receptive field
@pytest.mark.parametrize("output", [None, (0, 3), (2, 1)])
@pytest.mark.parametrize("objective", ["sum", "relu_sum"])
def test_erf_backward_matches_finite_differences(rng, output, objective):
    block = RasterMamba()
    x = rng.standard_normal((2, 3, 4, 3))
    erf = effective_receptive_field(block, x, output=output, objective=objective,
                                    normalize=None)
    i0, j0 = (1, 2) if output is None else output
    expected = fd_erf(block.forward, x, i0, j0, relu=objective == "relu_sum")
    assert erf.shape == (3, 4)
    assert_close(erf, expected, kind="fd")


def test_erf_of_raster_mamba_is_causal_in_scan_order(rng):
    """The Mamba block's output at a cell depends only on cells scanned before it."""
    block = RasterMamba(order="raster")
    x = rng.standard_normal((2, 3, 4, 3))
    erf = effective_receptive_field(block, x, output=(1, 1), objective="sum", normalize=None)
    flat = erf.ravel()
    assert np.all(flat[6:] == 0.0)  # cells after (1, 1) in raster order
    assert np.all(flat[:6] > 0.0)


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_erf_of_conv_stack_has_radius_depth(rng, depth):
    """A stack of `depth` 3x3 convolutions sees exactly the (2 depth + 1)^2 square."""
    weights = [rng.uniform(0.5, 1.5, size=(2, 3, 3)) for _ in range(depth)]

    def stack(x):
        acts = [x]
        for w in weights:
            acts.append(sr.depthwise_conv2d(acts[-1], w))

        def vjp(d):
            for w, a in zip(reversed(weights), reversed(acts[:-1])):
                d = sr.depthwise_conv2d_backward(d, a, w)[0]
            return d
        return acts[-1], vjp

    x = rng.standard_normal((1, 9, 9, 2))
    erf = effective_receptive_field(stack, x, objective="sum")
    support = erf > 0
    expected = np.zeros((9, 9), dtype=bool)
    expected[4 - depth:5 + depth, 4 - depth:5 + depth] = True
    np.testing.assert_array_equal(support, expected)
    assert erf.max() == 1.0


def test_erf_normalisations_and_dtype(rng):
    block = RasterMamba()
    x = rng.standard_normal((2, 3, 4, 3))
    raw = effective_receptive_field(block, x, normalize=None)
    assert_close(effective_receptive_field(block, x, normalize="max"), raw / raw.max())
    assert_close(effective_receptive_field(block, x, normalize="sum"), raw / raw.sum())
    logged = np.log10(1 + raw)
    assert_close(effective_receptive_field(block, x, log=True), logged / logged.max())
    erf32 = effective_receptive_field(block, x.astype(np.float32))
    assert erf32.dtype == np.float32


def test_erf_bad_input(rng):
    block = RasterMamba()
    x = rng.standard_normal((2, 3, 4, 3))
    with pytest.raises(ValueError, match="x has shape"):
        effective_receptive_field(block, x[0])
    with pytest.raises(ValueError, match="output"):
        effective_receptive_field(block, x, output=(3, 0))
    with pytest.raises(ValueError, match="normalize"):
        effective_receptive_field(block, x, normalize="l2")
    with pytest.raises(ValueError, match="objective"):
        effective_receptive_field(block, x, objective="max")
    with pytest.raises(TypeError, match="model_or_fn"):
        effective_receptive_field(42, x)
    with pytest.raises(ValueError, match="non-finite"):
        effective_receptive_field(block, np.full((1, 3, 4, 3), np.nan))
    with pytest.raises(ValueError, match="feature map"):
        effective_receptive_field(lambda x: (x[:, 0], lambda d: d), x)


def test_high_contribution_ratio():
    m = np.zeros((7, 7))
    m[3, 3] = 1.0
    assert erf_high_contribution_ratio(m, 0.99) == 1 / 49
    m[3, 4] = 1.0  # half the mass one pixel right: needs the 3x3 square
    assert erf_high_contribution_ratio(m, 0.5) == 1 / 49
    assert erf_high_contribution_ratio(m, 0.9) == 9 / 49
    assert erf_high_contribution_ratio(np.ones((7, 7)), 9 / 49) == 9 / 49
    with pytest.raises(ValueError, match="threshold"):
        erf_high_contribution_ratio(m, 1.5)
    with pytest.raises(ValueError, match="non-negative"):
        erf_high_contribution_ratio(-m, 0.5)


# --------------------------------------------------------------------------- hidden-attention maps
def random_scan(rng, batch, dim, L, N, variable=True):
    """delta, A, B, C, delta_bias of a real scan (tests/cases.py); delta > 0, valid with or
    without softplus."""
    form = "variable" if variable else "constant"
    kw = scan_case(rng, form, form, batch=batch, dim=dim, length=L, dstate=N, extras=False,
                   delta_bias=True)
    return kw["delta"], kw["A"], kw["B"], kw["C"], kw["delta_bias"]


def oracle_map(delta, A, B, C, bias, perm, H, W, query):
    """amap[b, d, p] = y[b, d, t_q] of the scan fed a one-hot input at cell p (channel-wise)."""
    batch, dim, L = delta.shape
    t_q = int(inverse(perm)[query[0] * W + query[1]])
    out = np.zeros((batch, dim, H * W))
    for p in range(H * W):
        u = np.zeros((batch, dim, L))
        u[:, :, int(inverse(perm)[p])] = 1.0  # the cell p sits at this sequence position
        y = sr.selective_scan(u, delta, A, B, C, delta_bias=bias, delta_softplus=True)
        out[:, :, p] = y[:, :, t_q]
    return out.reshape(batch, dim, H, W)


@pytest.mark.parametrize("order", ["raster", "snake", "column_reversed", "hilbert", "local"])
@pytest.mark.parametrize("variable", [True, False])
def test_attention_map_matches_scan_on_one_hot_inputs(rng, order, variable):
    H, W = 3, 4
    delta, A, B, C, bias = random_scan(rng, 2, 3, H * W, 2, variable)
    perm = scan_order(order, H, W)
    query = (1, 2)
    amap = hidden_attention_map(delta, A, B, C, perm, H, W, query, delta_bias=bias,
                                delta_softplus=True, channel_reduce=None)
    assert amap.shape == (2, 3, H, W)
    assert_close(amap, oracle_map(delta, A, B, C, bias, perm, H, W, query))
    assert_close(hidden_attention_map(delta, A, B, C, perm, H, W, query, delta_bias=bias,
                                      delta_softplus=True),
                 amap.mean(axis=1))
    assert_close(hidden_attention_map(delta, A, B, C, perm, H, W, query, delta_bias=bias,
                                      delta_softplus=True, channel_reduce="sum", absolute=True),
                 np.abs(amap).sum(axis=1))


@pytest.mark.parametrize("query", [(0, 0), (1, 2), (2, 3), 7])
def test_attention_map_causal_in_scan_order(rng, query):
    """Raster: zero after the query in raster order; reversed raster: zero before it."""
    H, W = 3, 4
    delta, A, B, C, bias = random_scan(rng, 1, 2, H * W, 2)
    p_q = query if isinstance(query, int) else query[0] * W + query[1]
    fwd = hidden_attention_map(delta, A, B, C, scan_order("raster", H, W), H, W, query,
                               channel_reduce=None, absolute=True).reshape(1, 2, -1)
    rev = hidden_attention_map(delta, A, B, C, scan_order("raster_reversed", H, W), H, W, query,
                               channel_reduce=None, absolute=True).reshape(1, 2, -1)
    assert np.all(fwd[..., p_q + 1:] == 0) and np.all(fwd[..., :p_q + 1] > 0)
    assert np.all(rev[..., :p_q] == 0) and np.all(rev[..., p_q:] > 0)


def test_attention_map_sums_to_scan_of_ones(rng):
    """Sum of the map over the grid = the scan's output at the query for an all-ones input."""
    H, W = 4, 3
    delta, A, B, C, bias = random_scan(rng, 2, 3, H * W, 2)
    perm = scan_order("snake_column", H, W)
    amap = hidden_attention_map(delta, A, B, C, perm, H, W, (2, 1), channel_reduce=None)
    y = sr.selective_scan(np.ones((2, 3, H * W)), delta, A, B, C)
    t_q = int(inverse(perm)[2 * W + 1])
    assert_close(amap.sum(axis=(2, 3)), y[:, :, t_q])


def test_attention_map_float32(rng):
    delta, A, B, C, _ = random_scan(rng, 1, 2, 6, 2)
    perm = scan_order("raster", 2, 3)
    amap = hidden_attention_map(delta.astype(np.float32), A, B, C, perm, 2, 3, (1, 1))
    assert amap.dtype == np.float32
    assert_close(amap, hidden_attention_map(delta, A, B, C, perm, 2, 3, (1, 1)), dtype=np.float32)


def test_multi_direction_maps_merge(rng):
    H, W = 3, 3
    dirs = []
    for order in ("raster", "raster_reversed", "column", "column_reversed"):
        delta, A, B, C, bias = random_scan(rng, 1, 2, H * W, 2)
        dirs.append(dict(delta=delta, A=A, B=B, C=C, delta_bias=bias, delta_softplus=True,
                         perm=scan_order(order, H, W)))
    maps, merged = multi_direction_attention_maps(dirs, H, W, (1, 1), absolute=True)
    assert maps.shape == (4, 1, H, W)
    for k, d in enumerate(dirs):
        assert_close(maps[k], hidden_attention_map(d["delta"], d["A"], d["B"], d["C"], d["perm"],
                                                   H, W, (1, 1), delta_bias=d["delta_bias"],
                                                   delta_softplus=True, absolute=True))
    assert_close(merged, maps.sum(axis=0))
    assert np.all(merged > 0)  # forward + backward directions see the whole image
    _, mean = multi_direction_attention_maps(dirs, H, W, (1, 1), merge="mean")
    assert mean.shape == (1, H, W)
    with pytest.raises(ValueError, match="missing"):
        multi_direction_attention_maps([dict(delta=dirs[0]["delta"])], H, W, (1, 1))
    with pytest.raises(ValueError, match="merge"):
        multi_direction_attention_maps(dirs, H, W, (1, 1), merge="max")


@pytest.mark.parametrize("order", ["raster", "spiral", "zorder"])
def test_mamba_attention_map_uses_block_cache(rng, order):
    H, W = 3, 3
    block = sr.MambaBlock(d_model=4, d_state=3, seed=1)
    x = rng.standard_normal((2, H, W, 4))
    perm = scan_order(order, H, W)
    amap = mamba_attention_map(block, x, perm, (1, 1), channel_reduce=None)
    _, cache = block.forward(to_sequence(x, perm), return_cache=True)
    A = -np.exp(block.params["A_log"])
    expected = oracle_map(cache["delta"], A, cache["Bmat"], cache["Cmat"],
                          block.params["dt_proj.bias"], perm, H, W, (1, 1))
    assert_close(amap, expected)
    t_q = int(inverse(perm)[4])
    after = perm[t_q + 1:]
    assert np.all(amap.reshape(2, -1, H * W)[..., after] == 0)


def test_attention_map_bad_input(rng):
    delta, A, B, C, _ = random_scan(rng, 1, 2, 6, 2)
    perm = scan_order("raster", 2, 3)
    with pytest.raises(ValueError, match="perm has length 9"):
        hidden_attention_map(delta, A, B, C, scan_order("raster", 3, 3), 3, 3, (0, 0))
    with pytest.raises(ValueError, match="H = 0"):
        hidden_attention_map(delta, A, B, C, perm, 0, 3, (0, 0))
    with pytest.raises(ValueError, match="query"):
        hidden_attention_map(delta, A, B, C, perm, 2, 3, (2, 0))
    with pytest.raises(ValueError, match="query"):
        hidden_attention_map(delta, A, B, C, perm, 2, 3, 6)
    with pytest.raises(TypeError, match="query"):
        hidden_attention_map(delta, A, B, C, perm, 2, 3, "centre")
    with pytest.raises(ValueError, match="channel_reduce"):
        hidden_attention_map(delta, A, B, C, perm, 2, 3, (0, 0), channel_reduce="max")
    with pytest.raises(ValueError, match="perm"):
        hidden_attention_map(delta, A, B, C, np.array([0, 1, 2, 3, 4, 4]), 2, 3, (0, 0))
    with pytest.raises(ValueError, match="delta"):
        hidden_attention_map(delta[0], A, B, C, perm, 2, 3, (0, 0))


def test_plot_maps_returns_figure(rng):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig = plot = sr.vision.plot_maps([rng.random((3, 3)), rng.random((3, 3)), rng.random((3, 3))],
                                     ["a", "b", "c"], query=(1, 1), ncols=2)
    assert len(plot.axes) == 4
    plt.close(fig)
    with pytest.raises(ValueError, match="maps\\[0\\]"):
        sr.vision.plot_maps([np.zeros(3)])


def test_attention_map_on_a_subgrid(rng):
    """ES2D: a sequence over part of the grid; zero everywhere when it misses the query."""
    H, W = 4, 4
    sub = atrous_subgrids(H, W, 2)[0]  # even rows, even columns
    delta, A, B, C, bias = random_scan(rng, 1, 2, sub.size, 2)
    amap = hidden_attention_map(delta, A, B, C, sub, H, W, (2, 2), channel_reduce=None)
    outside = np.setdiff1d(np.arange(H * W), sub)
    assert np.all(amap.reshape(1, 2, -1)[..., outside] == 0)
    assert np.all(np.abs(amap.reshape(1, 2, -1)[..., sub[:3]]) > 0)  # cells up to the query
    assert np.all(hidden_attention_map(delta, A, B, C, sub, H, W, (1, 1)) == 0)


def test_vim_attention_maps_match_oracle(rng):
    H, W = 3, 3
    mixer = sr.vision.VimMixer(d_model=4, d_state=2, seed=3)
    x = rng.standard_normal((2, H, W, 4))
    perm = scan_order("snake", H, W)
    maps, merged = vim_attention_maps(mixer, x, perm, (1, 1), channel_reduce=None)
    _, cache = mixer.forward(to_sequence(x, perm), return_cache=True)
    p = mixer.params
    want_f = oracle_map(cache["f"]["delta"], -np.exp(p["A_log"]), cache["f"]["Bmat"],
                        cache["f"]["Cmat"], p["dt_proj.bias"], perm, H, W, (1, 1))
    want_b = oracle_map(cache["b"]["delta"], -np.exp(p["A_b_log"]), cache["b"]["Bmat"],
                        cache["b"]["Cmat"], p["dt_proj_b.bias"], perm[::-1].copy(), H, W, (1, 1))
    assert_close(maps[0], want_f)
    assert_close(maps[1], want_b)
    assert_close(merged, 0.5 * (want_f + want_b))
    t_q = int(inverse(perm)[4])
    flat = maps.reshape(2, 2, -1, H * W)
    assert np.all(flat[0][..., perm[t_q + 1:]] == 0)  # forward path: nothing after the query
    assert np.all(flat[1][..., perm[:t_q]] == 0)  # backward path: nothing before it
    blk = sr.vision.VimBlock(d_model=4, d_state=2, seed=3)
    _, m2 = vim_attention_maps(blk, x, perm, (1, 1))
    assert m2.shape == (2, H, W)


@pytest.mark.parametrize("directions", [None, "es2d", "omnidirectional"])
def test_ss2d_attention_maps_match_oracle(rng, directions):
    H, W = 4, 4
    kw = {} if directions is None else {"directions": directions}
    ss2d = sr.vision.SS2D(d_model=4, d_state=2, seed=5, **kw)
    x = rng.standard_normal((1, H, W, 4))
    maps, merged = ss2d_attention_maps(ss2d, x, (2, 1), channel_reduce=None)
    _, cache = ss2d.forward(x, return_cache=True)
    core, D = cache["core"], ss2d.config.d_inner
    A = -np.exp(ss2d.params["A_logs"])
    for k, perm in enumerate(core["perms"]):
        if perm.size < H * W:  # ES2D sub-grid: check causality and zeros instead
            if 2 * W + 1 not in perm:
                assert np.all(maps[k] == 0)
            continue
        want = oracle_map(core["deltas"][k], A[k * D:(k + 1) * D], core["Bs"][k], core["Cs"][k],
                          ss2d.params["dt_projs_bias"][k], perm, H, W, (2, 1))
        assert_close(maps[k], want)
    assert_close(merged, maps.sum(axis=0))
    vss = sr.vision.VSSBlock(d_model=4, d_state=2, seed=5)
    assert ss2d_attention_maps(vss, x, (2, 1))[0].shape == (4, 1, H, W)
