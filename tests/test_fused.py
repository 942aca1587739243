"""The fused block pieces: the causal conv with SiLU and the official-signature inner function.

Reference twins (``ssm_ref.causal_conv1d(..., activation="silu")``,
``ssm_ref.mamba_inner_fn`` and their backwards) against finite differences and
against the Mamba block they are cut from; the Numba versions
(``fast.causal_conv1d`` / ``fast.mamba_inner_fn`` with ``backend="numba"``, and
the fused inner path the blocks use) against the reference twins with the
shared ``"backend"`` tolerance, float64 and float32.
"""
from __future__ import annotations

import functools

import numpy as np
import pytest
from conftest import assert_close, numerical_gradient

import fast
import ssm_ref as sr
from ssm_ref import MambaBlock
from ssm_ref.fused import INNER_FN_ARGS, block_arguments, mamba_inner_fn, mamba_inner_fn_backward
from fast import numba_cpu, numba_fused
from fast._views import in_parent

SMALL = dict(d_model=8, d_state=4)


def perturbed_block(rng, **kw):
    """A small block whose parameters are moved off the init so every path carries signal."""
    block = MambaBlock(**{**SMALL, **kw}, seed=int(rng.integers(1 << 30)))
    p = block.params
    p["D"] = rng.standard_normal(p["D"].shape)
    p["dt_proj.bias"] = p["dt_proj.bias"] + 3.0
    p["A_log"] = p["A_log"] + 0.3 * rng.standard_normal(p["A_log"].shape)
    p["conv1d.weight"] = p["conv1d.weight"] + 0.3 * rng.standard_normal(p["conv1d.weight"].shape)
    for k in ("in_proj.bias", "out_proj.bias"):
        if k in p:
            p[k] = rng.standard_normal(p[k].shape) * 0.3
    return block


def fd_check(loss, analytic, arr, name, n=12, rng=None):
    """``analytic`` against central differences of ``loss`` at ``n`` entries of ``arr``."""
    idx = np.arange(arr.size) if arr.size <= n else rng.choice(arr.size, n, replace=False)
    numeric = numerical_gradient(loss, arr, indices=idx)
    assert_close(np.asarray(analytic).reshape(-1)[idx], numeric, kind="fd", err_msg=name)


# --------------------------------------------------------------------------- causal conv + SiLU
@pytest.mark.parametrize("with_bias", [True, False])
def test_conv_silu_is_silu_of_conv(rng, with_bias):
    x, w = rng.standard_normal((2, 3, 9)), rng.standard_normal((3, 4))
    b = rng.standard_normal(3) if with_bias else None
    expected = sr.silu(sr.causal_conv1d(x, w, b))
    assert_close(sr.causal_conv1d(x, w, b, activation="silu"), expected)
    assert_close(sr.causal_conv1d(x, w, b, activation="swish"), expected)


@pytest.mark.parametrize("with_bias", [True, False])
def test_conv_silu_backward_matches_finite_differences(rng, with_bias):
    x, w = rng.standard_normal((2, 3, 7)), rng.standard_normal((3, 4))
    b = rng.standard_normal(3) if with_bias else None
    R = rng.standard_normal(x.shape)
    dx, dw, db = sr.causal_conv1d_backward(R, x, w, b, activation="silu")

    def loss(_):
        return float(np.sum(sr.causal_conv1d(x, w, b, activation="silu") * R))

    assert_close(dx, numerical_gradient(loss, x), kind="fd", err_msg="dx")
    assert_close(dw, numerical_gradient(loss, w), kind="fd", err_msg="dweight")
    if with_bias:
        assert_close(db, numerical_gradient(loss, b), kind="fd", err_msg="dbias")
    else:
        assert db is None


@pytest.mark.parametrize("bad", ["relu", "SiLU", 1])
def test_conv_unknown_activation_raises(bad):
    for call in (lambda: sr.causal_conv1d(np.ones((1, 2, 3)), np.ones((2, 2)), activation=bad),
                 lambda: sr.causal_conv1d_backward(np.ones((1, 2, 3)), np.ones((1, 2, 3)),
                                                   np.ones((2, 2)), activation=bad)):
        with pytest.raises(ValueError, match="activation"):
            call()


# --------------------------------------------------------------------------- mamba_inner_fn
def block_case(rng, batch=2, length=6, **kw):
    block = perturbed_block(rng, **kw)
    u = rng.standard_normal((batch, length, block.config.d_model))  # (B, L, d_model)
    xz = sr.linear(u, block.params["in_proj.weight"],
                   block.params.get("in_proj.bias")).transpose(0, 2, 1)  # (B, 2D, L)
    return block, u, np.ascontiguousarray(xz)


@pytest.mark.parametrize("bias", [False, True])
def test_inner_fn_is_the_block_after_in_proj(rng, bias):
    """Forward: mamba_inner_fn(in_proj(u)) == MambaBlock(u); backward: the block's gradients."""
    block, u, xz = block_case(rng, bias=bias)
    args = block_arguments(block.params)
    out = mamba_inner_fn(xz, **args)
    block_out, cache = block.forward(u, return_cache=True)
    assert_close(out, block_out, kind="exact")

    dout = rng.standard_normal(out.shape)
    g = mamba_inner_fn_backward(dout, xz, **args)
    du, grads = block.backward(dout, cache)
    names = {"conv1d_weight": "conv1d.weight", "conv1d_bias": "conv1d.bias",
             "x_proj_weight": "x_proj.weight", "delta_proj_weight": "dt_proj.weight",
             "out_proj_weight": "out_proj.weight", "D": "D", "delta_bias": "dt_proj.bias"}
    if bias:
        names["out_proj_bias"] = "out_proj.bias"
    else:
        assert g["out_proj_bias"] is None
    for ours, theirs in names.items():
        assert_close(g[ours], grads[theirs], kind="exact", err_msg=ours)
    assert_close(g["A"] * args["A"], grads["A_log"], kind="exact", err_msg="A -> A_log")
    # dxz through in_proj gives the block's du
    du_ours, _, _ = sr.linear_backward(g["xz"].transpose(0, 2, 1), u,
                                       block.params["in_proj.weight"])
    assert_close(du_ours, du, kind="exact", err_msg="du")
    assert g["B"] is None and g["C"] is None


@pytest.mark.parametrize("variant", ["block", "no-optionals", "given-BC", "no-softplus"])
def test_inner_fn_backward_matches_finite_differences(rng, variant):
    block, _, xz = block_case(rng, batch=2, length=5, d_conv=3,
                              conv_bias=variant != "no-optionals")
    args = block_arguments(block.params)
    args = {k: (None if v is None else np.array(v, dtype=np.float64)) for k, v in args.items()}
    D, N = args["A"].shape
    if variant == "no-optionals":
        args.update(D=None, delta_bias=None, out_proj_bias=None)
    if variant == "given-BC":
        args.update(B=rng.standard_normal((D, N)), C=rng.standard_normal((2, N, 5)))
    softplus = variant != "no-softplus"
    if not softplus:
        args["delta_bias"] = np.abs(args["delta_bias"]) + 0.5  # delta stays positive
        args["delta_proj_weight"] = 0.1 * args["delta_proj_weight"]
    dout = rng.standard_normal((2, 5, block.config.d_model))
    g = mamba_inner_fn_backward(dout, xz, **args, delta_softplus=softplus)
    arrays = {"xz": xz, **args}

    def loss(_):
        return float(np.sum(mamba_inner_fn(xz, **args, delta_softplus=softplus) * dout))

    for name in INNER_FN_ARGS:
        if arrays.get(name) is None:
            assert g[name] is None, name
            continue
        assert g[name].shape == arrays[name].shape and g[name].dtype == arrays[name].dtype
        fd_check(loss, g[name], arrays[name], name, rng=rng)


def test_inner_fn_keeps_dtype(rng):
    block, _, xz = block_case(rng)
    args = block_arguments(block.params)
    out32 = mamba_inner_fn(xz.astype(np.float32), **args)
    assert out32.dtype == np.float32
    assert_close(out32, mamba_inner_fn(xz, **args), kind="backend", dtype=np.float32)
    g = mamba_inner_fn_backward(np.ones(out32.shape, np.float32), xz.astype(np.float32), **args)
    assert g["xz"].dtype == np.float32 and g["A"].dtype == np.float64


@pytest.mark.parametrize("change, error, match", [
    (dict(xz=np.ones((1, 15, 3))), ValueError, r"xz has shape \(1, 15, 3\)"),
    (dict(conv1d_weight=np.ones((8, 4))), ValueError, "conv1d_weight"),
    (dict(x_proj_weight=np.ones((3, 8))), ValueError, r"x_proj_weight has shape \(3, 8\)"),
    (dict(A=np.ones((8, 2), complex)), TypeError, "A is complex"),
    (dict(out_proj_weight=None), TypeError, "out_proj_weight is None"),
    (dict(D=np.ones(3)), ValueError, r"D has shape \(3,\)"),
    (dict(delta_bias=np.full(8, np.nan)), ValueError, "delta_bias"),
    (dict(delta_softplus=1), TypeError, "delta_softplus"),
])
def test_inner_fn_bad_input(change, error, match):
    args = {"xz": np.ones((1, 16, 3)), **block_arguments(MambaBlock(d_model=4, d_state=2).params)}
    args.update(change)
    for fn in (mamba_inner_fn, functools.partial(mamba_inner_fn_backward, np.ones((1, 3, 4))),
               functools.partial(fast.mamba_inner_fn, backend="numba")):
        with pytest.raises(error, match=match):
            fn(**args)


def test_inner_fn_backward_checks_dout():
    args = {"xz": np.ones((1, 16, 3)), **block_arguments(MambaBlock(d_model=4, d_state=2).params)}
    with pytest.raises(ValueError, match=r"dout has shape \(1, 3, 5\)"):
        mamba_inner_fn_backward(np.ones((1, 3, 5)), **args)
    with pytest.raises(ValueError, match="dout"):
        mamba_inner_fn_backward(np.full((1, 3, 4), np.inf), **args)


# --------------------------------------------------------------------------- Numba against the twins
DTYPES = pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])


@DTYPES
@pytest.mark.parametrize("activation", [None, "silu"])
@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize("view", ["contiguous", "channel-slice", "flipped"])
def test_numba_conv_matches_reference(rng, dtype, activation, with_bias, view):
    xz = rng.standard_normal((3, 10, 11)).astype(dtype)  # (B, 2D, L), D = 5
    x = {"contiguous": np.ascontiguousarray(xz[:, :5]), "channel-slice": xz[:, :5],
         "flipped": xz[:, :5, ::-1]}[view]
    w = rng.standard_normal((5, 4)).astype(dtype)
    b = rng.standard_normal(5).astype(dtype) if with_bias else None
    y = fast.causal_conv1d(x, w, b, activation, backend="numba")
    assert_close(y, sr.causal_conv1d(x.astype(np.float64), w.astype(np.float64), b
                                     if b is None else b.astype(np.float64), activation),
                 kind="backend", dtype=dtype)
    dy = rng.standard_normal(x.shape).astype(dtype)
    got = fast.causal_conv1d_backward(dy, x, w, b, activation, backend="numba")
    want = sr.causal_conv1d_backward(dy.astype(np.float64), x.astype(np.float64),
                                     w.astype(np.float64),
                                     None if b is None else b.astype(np.float64), activation)
    for name, g, r in zip(("dx", "dweight", "dbias"), got, want):
        if r is None:
            assert g is None
        else:
            assert_close(g, r, kind="backend", dtype=dtype, err_msg=name)


@DTYPES
@pytest.mark.parametrize("shape", [(2, 3, 2, 4), (4, 7, 1, 3), (2, 5, 9, 1), (3, 41, 130, 4),
                                   (1, 2, 2100, 4)],
                         ids=["L<K", "L=1", "K=1", "blocks", "rows-over-a-block"])
@pytest.mark.parametrize("view", ["contiguous", "channels-last", "flipped"])
def test_numba_conv_rows_and_blocks_match_reference(rng, dtype, shape, view):
    """The kernels take the rows a block of numba_fused._SILU_BLOCK elements at a time and
    copy strided rows into scratch: rows shorter than the kernel, one step, one tap, blocks
    with a remainder (41 x 130 rows, 15 per block), rows longer than a block; C-contiguous,
    channels-last tokens (xz from (B, L, 2D)) and flipped views."""
    batch, dim, length, k = shape
    tokens = rng.standard_normal((batch, length, 2 * dim)).astype(dtype)  # (B, L, 2D)
    xz = tokens.transpose(0, 2, 1)  # (B, 2D, L), channels last in memory
    x = {"contiguous": np.ascontiguousarray(xz[:, :dim]), "channels-last": xz[:, :dim],
         "flipped": xz[:, :dim, ::-1]}[view]
    w = rng.standard_normal((dim, k)).astype(dtype)
    b = rng.standard_normal(dim).astype(dtype)
    x64, w64, b64 = (a.astype(np.float64) for a in (x, w, b))
    y = fast.causal_conv1d(x, w, b, "silu", backend="numba")
    assert_close(y, sr.causal_conv1d(x64, w64, b64, "silu"), kind="backend", dtype=dtype)
    dy = rng.standard_normal(x.shape).astype(dtype)[:, :, ::-1]  # a strided gradient too
    got = fast.causal_conv1d_backward(dy, x, w, b, "silu", backend="numba")
    want = sr.causal_conv1d_backward(dy.astype(np.float64), x64, w64, b64, "silu")
    for name, g, r in zip(("dx", "dweight", "dbias"), got, want):
        assert_close(g, r, kind="backend", dtype=dtype, err_msg=name)
    _, dw, db = fast.causal_conv1d_backward(dy, x, w, b, None, backend="numba")  # no SiLU
    _, dw_ref, db_ref = sr.causal_conv1d_backward(dy.astype(np.float64), x64, w64, b64, None)
    assert_close(dw, dw_ref, kind="backend", dtype=dtype)
    assert_close(db, db_ref, kind="backend", dtype=dtype)


def test_numba_conv_errors_are_the_reference_ones():
    for call in (lambda m: m.causal_conv1d(np.ones((1, 3, 5)), np.ones((2, 4))),
                 lambda m: m.causal_conv1d(np.ones((1, 3, 5)), np.ones((3, 4)), activation="gelu"),
                 lambda m: m.causal_conv1d_backward(np.ones((1, 3, 4)), np.ones((1, 3, 5)),
                                                    np.ones((3, 4)))):
        with pytest.raises(ValueError) as ref_err:
            call(sr)
        with pytest.raises(ValueError) as numba_err:
            call(numba_fused)
        assert str(numba_err.value) == str(ref_err.value)


def test_fused_pieces_have_no_cuda_backend(rng):
    x, w = np.ones((1, 2, 3)), np.ones((2, 2))
    with pytest.raises(RuntimeError, match="cuda"):
        fast.causal_conv1d(x, w, backend="cuda")
    with pytest.raises(ValueError, match="backend"):
        fast.causal_conv1d(x, w, backend="gpu")
    assert_close(fast.causal_conv1d(x, w, backend="ref"), sr.causal_conv1d(x, w))


def inner_variant(rng, variant, batch=2, length=7):
    block, _, xz = block_case(rng, batch=batch, length=length,
                              conv_bias=variant != "no-optionals", bias=variant == "block")
    args = block_arguments(block.params)
    D, N = args["A"].shape
    if variant == "no-optionals":
        args.update(D=None, delta_bias=None, out_proj_bias=None)
    if variant == "given-BC":
        args.update(B=rng.standard_normal((D, N)), C=rng.standard_normal((batch, N, length)))
    softplus = variant != "no-softplus"
    if not softplus:
        args["delta_bias"] = np.abs(args["delta_bias"]) + 0.5
        args["delta_proj_weight"] = 0.1 * args["delta_proj_weight"]
    return xz, args, softplus


@DTYPES
@pytest.mark.parametrize("variant", ["block", "no-optionals", "given-BC", "no-softplus"])
def test_numba_inner_fn_matches_reference(rng, dtype, variant):
    xz, args, softplus = inner_variant(rng, variant)
    out = fast.mamba_inner_fn(xz.astype(dtype), **args, delta_softplus=softplus, backend="numba")
    assert_close(out, mamba_inner_fn(xz, **args, delta_softplus=softplus), kind="backend",
                 dtype=dtype)
    dout = rng.standard_normal(out.shape)
    g = fast.mamba_inner_fn_backward(dout.astype(dtype), xz.astype(dtype), **args,
                                     delta_softplus=softplus, backend="numba")
    ref = mamba_inner_fn_backward(dout, xz, **args, delta_softplus=softplus)
    for name in INNER_FN_ARGS:
        if ref[name] is None:
            assert g[name] is None, name
            continue
        want = dtype if name == "xz" else ref[name].dtype  # each gradient in its argument's dtype
        assert_close(g[name], ref[name], kind="backend", dtype=want, precision=dtype,
                     err_msg=name)


# --------------------------------------------------------------------------- blocks on the fused path
def block_pair(make, **kw):
    """The same block twice: on the reference functions, and on fast.scan_functions('numba')."""
    ref_block = make(**kw)
    numba_block = make(**kw)
    numba_block.set_backend(*fast.scan_functions("numba"))
    return ref_block, numba_block


@pytest.mark.parametrize("make", [
    functools.partial(MambaBlock, d_model=8, d_state=4, seed=3),
    functools.partial(MambaBlock, d_model=8, d_state=4, seed=3, conv_bias=False, bias=True),
    functools.partial(sr.vision.VimMixer, d_model=8, d_state=4, seed=3),
    functools.partial(sr.vision.VimBlock, d_model=8, d_state=4, seed=3),
], ids=["mamba", "mamba-bias", "vim-mixer", "vim-block"])
def test_blocks_use_the_fused_path_with_numba(rng, make, monkeypatch):
    ref_block, numba_block = block_pair(make)
    x = rng.standard_normal((2, 9, 8))
    calls = []
    real_conv = numba_fused._conv
    monkeypatch.setattr(numba_fused, "_conv", lambda *a, **k: calls.append(1) or real_conv(*a, **k))
    out, cache = numba_block.forward(x, return_cache=True)
    assert calls, "the Numba block did not run the fused convolution"
    out_ref, cache_ref = ref_block.forward(x, return_cache=True)
    assert_close(out, out_ref, kind="backend")
    dout = rng.standard_normal(out.shape)
    dx, grads = numba_block.backward(dout, cache)
    dx_ref, grads_ref = ref_block.backward(dout, cache_ref)
    assert_close(dx, dx_ref, kind="backend", err_msg="dx")
    assert grads.keys() == grads_ref.keys()
    for k in grads_ref:
        assert_close(grads[k], grads_ref[k], kind="backend", err_msg=k)


def test_fused_block_float32(rng):
    ref_block, numba_block = block_pair(MambaBlock, d_model=8, d_state=4, seed=1)
    x = rng.standard_normal((2, 9, 8)).astype(np.float32)
    out = numba_block(x)
    assert_close(out, ref_block(x), kind="backend", dtype=np.float32)


def test_prefill_then_step_on_the_fused_path(rng):
    _, block = block_pair(MambaBlock, d_model=8, d_state=4, seed=2)
    x = rng.standard_normal((1, 7, 8))
    _, conv, ssm = block.prefill(x[:, :5])
    y5, _, _ = block.step(x[:, 5], conv, ssm)
    assert_close(y5, block(x[:, :6])[:, 5], kind="backend")


def test_fused_backward_refuses_the_reference_cache(rng):
    ref_block, numba_block = block_pair(MambaBlock, d_model=8, d_state=4)
    x = rng.standard_normal((1, 4, 8))
    out, cache = ref_block.forward(x, return_cache=True)
    with pytest.raises(TypeError, match="cache"):
        numba_block.backward(np.ones_like(out), cache)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_inner_backward_split_gives_the_halves_of_dxz(rng, dtype):
    """``split=True`` (Vim's mixer, which merges each half with its other path's): ``(dx,
    dz)`` are exactly ``dxz``'s two halves, for the reference path and the fused one."""
    from ssm_ref.mamba import inner_path_weights, mamba_init
    params = mamba_init(sr.MambaConfig(d_model=4, d_state=3), seed=1)
    w = inner_path_weights(params, dtype=dtype)
    xz = rng.standard_normal((2, 16, 7)).astype(dtype)
    fwd, bwd = fast.scan_functions("numba")
    for inner_forward, inner_backward, scan_fn, scan_backward_fn in (
            (sr.mamba.inner_forward, sr.mamba.inner_backward, sr.selective_scan,
             sr.selective_scan_backward),
            (numba_fused.inner_forward, numba_fused.inner_backward, fwd, bwd)):
        y, cache, _ = inner_forward(xz, w, scan_fn)
        dy = rng.standard_normal(y.shape).astype(dtype)
        dxz, g = inner_backward(dy, cache, w, scan_backward_fn)
        (dx, dz), g_split = inner_backward(dy, cache, w, scan_backward_fn, split=True)
        assert dx.shape == dz.shape == (2, 8, 7) and dx.dtype == dz.dtype == dxz.dtype
        np.testing.assert_array_equal(dx, dxz[:, :8])
        np.testing.assert_array_equal(dz, dxz[:, 8:])
        for name, grad in g.items():
            np.testing.assert_array_equal(g_split[name], grad, err_msg=name)


KEEPING_BLOCKS = {  # a block whose scan's backward can start from its forward, and its input
    "vim-block": (functools.partial(sr.vision.VimBlock, d_model=8, d_state=4, seed=3), (2, 9, 8)),
    "ss2d": (functools.partial(sr.vision.SS2D, d_model=8, d_state=4, seed=3), (2, 3, 4, 8)),
    "es2d-one-scan-per-direction": (functools.partial(sr.vision.SS2D, d_model=8, d_state=4,
                                                      seed=3, directions="es2d"), (2, 3, 5, 8)),
    "multihead-ss2d": (functools.partial(sr.vision.MultiHeadSS2D, d_model=8, d_state=4, seed=3),
                       (2, 3, 4, 8)),
    "plainmamba": (functools.partial(sr.vision.PlainMambaMixer, d_model=8, d_state=4, seed=3),
                   (2, 3, 4, 8)),
}


@pytest.mark.parametrize("name", list(KEEPING_BLOCKS))
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_blocks_keep_their_scan_for_the_backward(rng, name, dtype, monkeypatch):
    """With fast.scan_functions('numba') a block's backward starts from the scan its forward
    kept (ssm_ref.kept_scan, fast.numba_cpu.attach_saved_scan): it checks none of the
    scan's arguments again, and every result is that of the same pair without the saving
    twins, bit for bit."""
    from cases import count_calls
    make, shape = KEEPING_BLOCKS[name]
    blocks = {}
    for label in ("saving", "plain"):
        blocks[label] = make()
        blocks[label].set_dtype(dtype)
    blocks["saving"].set_backend(*fast.scan_functions("numba"))
    blocks["plain"].set_backend(*fast.attach_inner_path(
        functools.partial(fast.selective_scan, backend="numba"),
        functools.partial(fast.selective_scan_backward, backend="numba")))
    x = rng.standard_normal(shape).astype(dtype)
    results = {}
    for label, block in blocks.items():
        out, cache = block.forward(x, return_cache=True)
        dout = np.random.default_rng(1).standard_normal(out.shape).astype(dtype)
        calls = count_calls(monkeypatch, numba_cpu, ["_check_structure"])
        dx, grads = block.backward(dout, cache)
        results[label] = (calls["_check_structure"], out, dx, grads)
        monkeypatch.undo()
    assert results["saving"][0] == 0 and results["plain"][0] > 0
    for got, want in zip(results["saving"][1:3], results["plain"][1:3]):
        assert got.dtype == want.dtype and np.array_equal(got, want)
    assert results["saving"][3].keys() == results["plain"][3].keys()
    for key, g in results["saving"][3].items():
        assert np.array_equal(g, results["plain"][3][key]), key


# --------------------------------------------------------------------------- VMamba's conv2d + SiLU
#: images (B, H, W, 4) cut from a (2, 5, 7, 8) array in the ways the kernels' callers hand
#: them over: channel slices read in place (SS2D's xc, and the other half), and views that
#: are not such a slice (copied first)
CONV2D_VIEWS = {"first channels": lambda xz: xz[..., :4], "last channels": lambda xz: xz[..., 4:],
                "middle channels": lambda xz: xz[..., 2:6],
                "every other channel": lambda xz: xz[..., ::2],
                "rows of a slice": lambda xz: xz[:, 1:, :, :4],
                "transposed": lambda xz: xz[..., :4].transpose(0, 2, 1, 3)[:, :5, :7],
                "contiguous": lambda xz: np.ascontiguousarray(xz[..., :4])}


@pytest.mark.parametrize("view", CONV2D_VIEWS)
def test_conv2d_reads_channel_slices_in_place(view):
    """The kernels get the slice's own memory (``fast._views.in_parent``: a parent and its
    first channel) when the image is a channel slice of the array owning the memory, else a
    contiguous copy."""
    xz = np.arange(2 * 5 * 7 * 8, dtype=np.float64).reshape(2, 5, 7, 8)
    x = CONV2D_VIEWS[view](xz)
    parent, c0 = in_parent(x, 3)
    assert parent.flags.c_contiguous
    np.testing.assert_array_equal(parent[..., c0:c0 + x.shape[-1]], x)
    in_place = view.endswith("channels") and view != "every other channel"
    assert np.shares_memory(parent, xz) == in_place, view


@DTYPES
@pytest.mark.parametrize("activation", [None, "silu"])
@pytest.mark.parametrize("k, with_bias", [(3, True), (3, False), (2, True), (5, True)])
@pytest.mark.parametrize("view", ["first channels", "last channels", "rows of a slice"])
def test_numba_conv2d_matches_reference(rng, dtype, activation, k, with_bias, view):
    xz = rng.standard_normal((2, 5, 7, 8)).astype(dtype)  # (B, H, W, 2C)
    x = CONV2D_VIEWS[view](xz)  # a channel slice, as SS2D's xc, or a copied view
    w = rng.standard_normal((4, k, k)).astype(dtype)
    b = rng.standard_normal(4).astype(dtype) if with_bias else None
    f64 = (lambda a: None if a is None else a.astype(np.float64))
    ref = sr.depthwise_conv2d(f64(x), f64(w), f64(b))
    if activation:
        ref = sr.silu(ref)
    assert_close(numba_fused.depthwise_conv2d(x, w, b, activation), ref, kind="backend",
                 dtype=dtype)
    dy = rng.standard_normal(x.shape).astype(dtype)
    dpre = sr.silu_backward(f64(dy), sr.depthwise_conv2d(f64(x), f64(w), f64(b))) \
        if activation else f64(dy)
    want = sr.depthwise_conv2d_backward(dpre, f64(x), f64(w), f64(b))
    got = numba_fused.depthwise_conv2d_backward(dy, x, w, b, activation)
    for name, g, r in zip(("dx", "dweight", "dbias"), got, want):
        if r is None:
            assert g is None
        else:
            assert_close(g, r, kind="backend", dtype=dtype, err_msg=name)


@DTYPES
@pytest.mark.parametrize("into", ["first channels", "last channels", "contiguous"])
def test_numba_conv2d_silu_backward_writes_dx_where_it_is_told(rng, dtype, into):
    """``dx=`` a channel slice of a (B, H, W, 2C) array (the mixers' input-projection
    gradient) or a whole array: the same values as without it, written there, and the rest
    of the parent untouched."""
    x = rng.standard_normal((2, 5, 7, 4)).astype(dtype)
    w, b = rng.standard_normal((4, 3, 3)).astype(dtype), rng.standard_normal(4).astype(dtype)
    dy = rng.standard_normal(x.shape).astype(dtype)
    alone = numba_fused.conv2d_silu_backward(dy, x, w, b)
    parent = np.full((2, 5, 7, 8), 7.0, dtype)
    dx = CONV2D_VIEWS[into](parent) if into != "contiguous" else np.full(x.shape, 7.0, dtype)
    got = numba_fused.conv2d_silu_backward(dy, x, w, b, dx=dx)
    assert got[0] is dx
    for name, g, r in zip(("dx", "dweight", "dbias"), got, alone):
        assert_close(g, r, kind="exact", dtype=dtype, err_msg=name)
    if into != "contiguous":
        rest = parent[..., 4:] if into == "first channels" else parent[..., :4]
        assert np.all(rest == 7.0)


@DTYPES
def test_numba_conv2d_silu_backward_reads_channels_first_dy_in_place(rng, dtype, monkeypatch):
    """``dy`` as the transpose of a C-contiguous (B, C, H, W) array, as the mixers' gradients
    come from the cross-merge: the kernel gets that array itself (no copy) and the results
    are those of its channels-last copy, exactly; another dtype is copied instead."""
    x = rng.standard_normal((2, 5, 7, 4)).astype(dtype)
    w, b = rng.standard_normal((4, 3, 3)).astype(dtype), rng.standard_normal(4).astype(dtype)
    dy_cf = rng.standard_normal((2, 4, 5, 7)).astype(dtype)  # (B, C, H, W)
    dy = dy_cf.transpose(0, 2, 3, 1)  # (B, H, W, C), channels first underneath
    seen = []
    kernel = numba_fused._conv2d_grad_pre

    def spy(*args):
        seen.append((args[0], args[1]))
        return kernel(*args)
    monkeypatch.setattr(numba_fused, "_conv2d_grad_pre", spy)
    got = numba_fused.conv2d_silu_backward(dy, x, w, b)
    want = numba_fused.conv2d_silu_backward(np.ascontiguousarray(dy), x, w, b)
    other = numba_fused.conv2d_silu_backward(dy.astype(np.float16), x, w, b)
    assert np.shares_memory(seen[0][0], dy_cf) and seen[0][1]
    assert not seen[1][1] and not seen[2][1]  # channels last: C-contiguous, or copied
    for name, g, r in zip(("dx", "dweight", "dbias"), got, want):
        assert_close(g, r, kind="exact", dtype=dtype, err_msg=name)
    assert_close(other[0], numba_fused.conv2d_silu_backward(
        dy.astype(np.float16).astype(dtype), x, w, b)[0], kind="exact", dtype=dtype)


@pytest.mark.parametrize("dx, message", [
    (np.ones((2, 5, 7, 8))[..., ::2], "should be \\(2, 5, 7, 4\\) in float64, C-contiguous or a "
                                      "channel slice"),
    (np.ones((2, 5, 7, 3)), "Parameter dx has shape \\(2, 5, 7, 3\\)"),
    (np.ones((2, 5, 7, 4), np.float32), "dtype float32"),
])
def test_numba_conv2d_silu_backward_refuses_a_dx_it_cannot_write(dx, message):
    """Every other channel (the kernel would write into a copy), another shape or dtype."""
    x = np.ones((2, 5, 7, 4))
    with pytest.raises(ValueError, match=message):
        numba_fused.conv2d_silu_backward(np.ones_like(x), x, np.ones((4, 3, 3)), None, dx=dx)


def test_ss2d_refuses_a_fused_cache_with_other_scan_functions(rng):
    """A cache whose forward ran the fused out_norm + gate and conv cannot go to the reference
    backward."""
    block = sr.vision.SS2D(d_model=8, d_state=4, seed=0)
    block.set_backend(*fast.scan_functions("numba"))
    out, cache = block.forward(rng.standard_normal((2, 3, 4, 8)), return_cache=True)
    block.set_backend(*fast.scan_functions("ref"))
    with pytest.raises(TypeError, match="cache comes from a forward on the fused Numba path"):
        block.backward(np.ones_like(out), cache)


@pytest.mark.parametrize("name", ["vmamba", "localmamba", "efficientvmamba", "plainmamba"])
def test_ss2d_models_use_the_fused_conv_with_numba(rng, name, monkeypatch):
    """SS2D's 3x3 and PlainMamba's 7x7 depthwise convolution + SiLU run the Numba kernel."""
    from cases import numba_against_reference, small_model
    forward, both = numba_against_reference(monkeypatch, small_model(name), numba_fused,
                                            ["_conv2d", "_conv2d_backward"],
                                            rng.standard_normal((3, 8, 8, 1)), rng)
    assert forward["_conv2d"], "SS2D did not run the fused conv2d + SiLU"
    assert both["_conv2d_backward"] == both["_conv2d"]  # one backward per convolution
