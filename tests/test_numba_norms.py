"""The Numba norms (``fast.numba_norms``) against their reference twins, and the models using them.

LayerNorm and RMSNorm, forward and backward, against ``ssm_ref.nn``'s in float64 (the
shared ``"backend"`` tolerance, float64 and float32 input); SS2D's fused out_norm + gate
against the reference's ``layer_norm`` then ``y * silu(z)``; PlainMamba's gate alone (its
reference twin against a loop and finite differences first); then the blocks and
classifiers on the Numba backend, which must run these kernels and agree with the
reference models.  The reference norms themselves are checked against finite
differences in ``tests/test_nn.py``.
"""
from __future__ import annotations

import numpy as np
import pytest
from cases import count_calls, numba_threads
from conftest import assert_close, numerical_gradient

import fast
import ssm_ref as sr
from fast import numba_norms
from ssm_ref.vision import plainmamba

DTYPES = pytest.mark.parametrize("dtype", [np.float64, np.float32])


def f64(a):
    return None if a is None else np.asarray(a, dtype=np.float64)


def norm_pair(norm, with_bias=True):
    """(Numba forward, backward, reference forward, backward) taking (x, weight, bias)."""
    if norm == "layer":
        return (numba_norms.layer_norm, numba_norms.layer_norm_backward, sr.nn.layer_norm,
                sr.nn.layer_norm_backward)
    return (lambda x, w, b: numba_norms.rms_norm(x, w),
            lambda dy, x, w, b: numba_norms.rms_norm_backward(dy, x, w) + (None,),
            lambda x, w, b: sr.nn.rms_norm(x, w),
            lambda dy, x, w, b: sr.nn.rms_norm_backward(dy, x, w) + (None,))


@DTYPES
@pytest.mark.parametrize("norm, with_bias", [("layer", True), ("layer", False), ("rms", False)])
@pytest.mark.parametrize("layout", ["tokens", "image", "transposed", "1-d", "one feature"])
def test_numba_norm_matches_reference(rng, dtype, norm, with_bias, layout):
    """Rows of any layout (a transposed view is copied), the features offset from 0 and
    scaled, so that the centring and the scale both matter."""
    shape = {"tokens": (3, 7, 24), "image": (2, 3, 5, 48), "transposed": (2, 24, 7),
             "1-d": (5,), "one feature": (4, 1)}[layout]
    x = (3 + 2 * rng.standard_normal(shape)).astype(dtype)
    if layout == "transposed":
        x = x.transpose(0, 2, 1)  # (2, 7, 24), features strided
    C = x.shape[-1]
    w = rng.standard_normal(C).astype(dtype)
    b = rng.standard_normal(C).astype(dtype) if with_bias else None
    fwd, bwd, ref_fwd, ref_bwd = norm_pair(norm)
    y = fwd(x, w, b)
    assert y.dtype == dtype and y.shape == x.shape
    assert_close(y, ref_fwd(f64(x), f64(w), f64(b)), kind="backend", dtype=dtype)
    dy = rng.standard_normal(x.shape).astype(dtype)
    got, want = bwd(dy, x, w, b), ref_bwd(f64(dy), f64(x), f64(w), f64(b))
    for name, g, r, like in zip(("dx", "dweight", "dbias"), got, want, (x, w, b)):
        if r is None:
            assert g is None, name
        else:
            assert g.dtype == like.dtype and g.shape == like.shape, name
            assert_close(g, r, kind="backend", dtype=dtype, err_msg=name)


def test_numba_norm_sums_the_weight_gradients_over_every_thread(rng):
    """More rows than threads, so that each thread's partial dweight counts: the result
    must equal the plain sum over the rows (an independent float64 loop)."""
    x = rng.standard_normal((1001, 16))
    dy = rng.standard_normal(x.shape)
    w = rng.standard_normal(16)
    _, dw, db = numba_norms.layer_norm_backward(dy, x, w, np.zeros(16))
    mu = x.mean(axis=1, keepdims=True)
    xhat = (x - mu) / np.sqrt(((x - mu) ** 2).mean(axis=1, keepdims=True) + 1e-5)
    want_dw = sum(dy[i] * xhat[i] for i in range(len(x)))
    assert_close(dw, want_dw, kind="backend", dtype=np.float64)
    assert_close(db, dy.sum(axis=0), kind="backend", dtype=np.float64)


@pytest.mark.parametrize("call, message", [
    (lambda: numba_norms.layer_norm(np.ones((2, 3)), np.ones(4)),
     r"Parameter weight has shape \(4,\) but should be \(3,\)"),
    (lambda: numba_norms.layer_norm(np.ones((2, 3)), np.ones(3), np.ones(2)),
     r"Parameter bias has shape \(2,\) but should be \(3,\)"),
    (lambda: numba_norms.rms_norm(np.array([[1.0, np.nan]]), np.ones(2)), r"Parameter x .*NaN"),
    (lambda: numba_norms.layer_norm_backward(np.ones((2, 4)), np.ones((2, 3)), np.ones(3)),
     r"Parameter dy has shape \(2, 4\) but should be \(2, 3\)"),
])
def test_numba_norm_refuses_bad_input_as_the_reference_does(call, message):
    with pytest.raises(ValueError, match=message):
        call()


# --------------------------------------------------------------------------- SS2D's out_norm + gate
@DTYPES
@pytest.mark.parametrize("tokens", [5, 32, 77])  # below, at and past a tile of 32 tokens
def test_numba_norm_gate_matches_reference(rng, dtype, tokens):
    """``layer_norm(y) * silu(z)`` with y channels first and z a channel slice of the
    tokens, and its gradients, dz written into the z half of a (B, T, 2D) array whose other
    half must stay as it was."""
    B, D = 2, 6
    y_cf = (1 + 2 * rng.standard_normal((B, D, tokens))).astype(dtype)  # (B, D, T)
    xz = rng.standard_normal((B, tokens, 2 * D)).astype(dtype)
    z = xz[..., D:]  # (B, T, D), rows of stride 2D
    w, b = rng.standard_normal(D).astype(dtype), rng.standard_normal(D).astype(dtype)
    y_tok = f64(y_cf).transpose(0, 2, 1)  # (B, T, D)
    y_norm = sr.nn.layer_norm(y_tok, f64(w), f64(b))
    out = numba_norms.norm_gate_forward(y_cf, z, w, b)
    assert out.dtype == dtype and out.shape == (B, tokens, D) and out.flags.c_contiguous
    assert_close(out, y_norm * sr.nn.silu(f64(z)), kind="backend", dtype=dtype)

    dout = rng.standard_normal(out.shape).astype(dtype)
    dxz = np.full(xz.shape, 7.0, dtype)
    dy_cf, dz, dw, db = numba_norms.norm_gate_backward(dout, y_cf, z, w, b, dz=dxz[..., D:])
    assert np.shares_memory(dz, dxz) and np.all(dxz[..., :D] == 7.0)
    want_dz = sr.nn.silu_backward(f64(dout) * y_norm, f64(z))
    want_dy, want_dw, want_db = sr.nn.layer_norm_backward(f64(dout) * sr.nn.silu(f64(z)), y_tok,
                                                          f64(w), f64(b))
    assert dy_cf.shape == y_cf.shape and dy_cf.flags.c_contiguous
    for name, g, r in [("dy", dy_cf, want_dy.transpose(0, 2, 1)), ("dz", dxz[..., D:], want_dz),
                       ("dweight", dw, want_dw), ("dbias", db, want_db)]:
        assert_close(g, r, kind="backend", dtype=dtype, err_msg=name)
    dy_new, dz_new, _, _ = numba_norms.norm_gate_backward(dout, y_cf, z, w, b)  # dz allocated
    assert_close(dy_new, dy_cf, kind="exact", dtype=dtype, err_msg="dy, dz allocated")
    assert_close(dz_new, dxz[..., D:], kind="exact", dtype=dtype, err_msg="dz allocated")


def test_numba_norm_gate_refuses_mismatched_shapes():
    y = np.ones((2, 4, 5))  # (B, D, T)
    with pytest.raises(ValueError, match=r"Parameter z has shape \(2, 4, 5\) but should be "
                                         r"\(2, 5, 4\)"):
        numba_norms.norm_gate_forward(y, np.ones((2, 4, 5)), np.ones(4), np.ones(4))
    with pytest.raises(ValueError, match=r"Parameter bias has shape \(5,\)"):
        numba_norms.norm_gate_forward(y, np.ones((2, 5, 4)), np.ones(4), np.ones(5))
    with pytest.raises(ValueError, match=r"Parameter dout has shape \(2, 4, 5\)"):
        numba_norms.norm_gate_backward(np.ones((2, 4, 5)), y, np.ones((2, 5, 4)), np.ones(4),
                                       np.ones(4))
    with pytest.raises(ValueError, match=r"Parameter y_cf has shape \(4, 5\)"):
        numba_norms.norm_gate_forward(np.ones((4, 5)), np.ones((5, 4)), np.ones(4), np.ones(4))
    strided = np.ones((2, 5, 8))[..., ::2]  # rows not contiguous: the kernel would misread
    with pytest.raises(ValueError, match=r"Parameter dz has shape \(2, 5, 4\), dtype float64 "
                                         r"and strides"):
        numba_norms.norm_gate_backward(np.ones((2, 5, 4)), y, np.ones((2, 5, 4)), np.ones(4),
                                       np.ones(4), dz=strided)


# --------------------------------------------------------------------------- PlainMamba's gate
def test_reference_gate_follows_its_definition_and_finite_differences(rng):
    """``out[b, t, d] = y[b, d, t] silu(z[b, t, d])`` by a loop over every index; the
    gradients of ``<dout, out>`` against central differences in y and z."""
    B, D, T = 2, 3, 4
    y_cf, z, dout = (rng.standard_normal(s) for s in ((B, D, T), (B, T, D), (B, T, D)))
    want = np.empty((B, T, D))
    for b in range(B):
        for t in range(T):
            for d in range(D):
                v = z[b, t, d]
                want[b, t, d] = y_cf[b, d, t] * v / (1 + np.exp(-v))
    assert_close(plainmamba.gate_forward(y_cf, z), want, kind="exact")
    dy_cf, dz = plainmamba.gate_backward(dout, y_cf, z)
    assert dy_cf.shape == y_cf.shape and dy_cf.flags.c_contiguous
    num_y = numerical_gradient(lambda a: np.vdot(dout, plainmamba.gate_forward(a, z)), y_cf)
    num_z = numerical_gradient(lambda a: np.vdot(dout, plainmamba.gate_forward(y_cf, a)), z)
    assert_close(dy_cf, num_y, kind="fd", err_msg="dy")
    assert_close(dz, num_z, kind="fd", err_msg="dz")


@DTYPES
@pytest.mark.parametrize("tokens", [5, 32, 77])  # below, at and past a tile of 32 tokens
def test_numba_gate_matches_reference(rng, dtype, tokens):
    """Forward and backward against the reference twins with z a channel slice of the
    tokens; dz written into the z half of a (B, T, 2D) array whose other half stays, and
    the same dz when it is allocated."""
    B, D = 2, 6
    y_cf = rng.standard_normal((B, D, tokens)).astype(dtype)  # (B, D, T)
    xz = rng.standard_normal((B, tokens, 2 * D)).astype(dtype)
    z = xz[..., D:]  # (B, T, D), rows of stride 2D
    out = numba_norms.gate_forward(y_cf, z)
    assert out.dtype == dtype and out.shape == (B, tokens, D) and out.flags.c_contiguous
    assert_close(out, plainmamba.gate_forward(f64(y_cf), f64(z)), kind="backend", dtype=dtype)
    dout = rng.standard_normal(out.shape).astype(dtype)
    dxz = np.full(xz.shape, 7.0, dtype)
    dy_cf, dz = numba_norms.gate_backward(dout, y_cf, z, dz=dxz[..., D:])
    assert np.shares_memory(dz, dxz) and np.all(dxz[..., :D] == 7.0)
    assert dy_cf.dtype == dtype and dy_cf.flags.c_contiguous
    want_dy, want_dz = plainmamba.gate_backward(f64(dout), f64(y_cf), f64(z))
    assert_close(dy_cf, want_dy, kind="backend", dtype=dtype, err_msg="dy")
    assert_close(dxz[..., D:], want_dz, kind="backend", dtype=dtype, err_msg="dz")
    dy_new, dz_new = numba_norms.gate_backward(dout, y_cf, z)  # dz allocated
    assert_close(dy_new, dy_cf, kind="exact", dtype=dtype, err_msg="dy, dz allocated")
    assert_close(dz_new, dxz[..., D:], kind="exact", dtype=dtype, err_msg="dz allocated")
    ref_dxz = np.full(xz.shape, 7.0)  # the reference writes into a given dz too
    plainmamba.gate_backward(f64(dout), f64(y_cf), f64(z), dz=ref_dxz[..., D:])
    assert_close(ref_dxz[..., D:], want_dz, kind="exact")
    assert np.all(ref_dxz[..., :D] == 7.0)


@pytest.mark.parametrize("module", [plainmamba, numba_norms], ids=["reference", "numba"])
def test_both_gates_refuse_mismatched_shapes(module):
    """No silent broadcast: the same errors, naming the argument, from both twins."""
    y = np.ones((2, 4, 5))  # (B, D, T)
    with pytest.raises(ValueError, match=r"Parameter z has shape \(2, 4, 5\) but should be "
                                         r"\(2, 5, 4\)"):
        module.gate_forward(y, np.ones((2, 4, 5)))
    with pytest.raises(ValueError, match=r"Parameter y_cf has shape \(4, 5\) but should be "
                                         r"\(B, D, T\)"):
        module.gate_forward(np.ones((4, 5)), np.ones((5, 4)))
    with pytest.raises(ValueError, match=r"Parameter dout has shape \(2, 4, 5\) but should be "
                                         r"\(2, 5, 4\)"):
        module.gate_backward(np.ones((2, 4, 5)), y, np.ones((2, 5, 4)))
    with pytest.raises(ValueError, match=r"Parameter dz has shape \(2, 5, 3\)"):
        module.gate_backward(np.ones((2, 5, 4)), y, np.ones((2, 5, 4)), dz=np.ones((2, 5, 3)))


def test_numba_gate_refuses_a_dz_it_cannot_write():
    """Rows not contiguous, or another dtype than the compute dtype: the kernel would
    misread them, so the call raises instead."""
    y, z, dout = np.ones((2, 4, 5)), np.ones((2, 5, 4)), np.ones((2, 5, 4))
    for dz in (np.ones((2, 5, 8))[..., ::2], np.ones((2, 5, 4), np.float32)):
        with pytest.raises(ValueError, match=r"Parameter dz has shape \(2, 5, 4\), dtype "):
            numba_norms.gate_backward(dout, y, z, dz=dz)


# --------------------------------------------------------------------------- the models
@pytest.mark.parametrize("name, kernels", [
    ("vmamba", ["_norm_gate_fwd", "_norm_gate_bwd", "_norm_fwd", "_norm_bwd"]),
    ("localmamba", ["_norm_gate_fwd", "_norm_gate_bwd", "_norm_fwd", "_norm_bwd"]),
    ("vim", ["_norm_fwd", "_norm_bwd"]),  # RMSNorm in the blocks and the head
    ("plainmamba", ["_norm_gate_fwd", "_norm_gate_bwd", "_norm_fwd", "_norm_bwd"]),
])
def test_models_on_numba_run_the_numba_norms(rng, name, kernels, monkeypatch):
    """Each model on the Numba backend runs these kernels (counted), as many backwards as
    forwards, and its output and gradients agree with the same model on the reference."""
    kw = dict(img_size=(8, 8), in_chans=1, embed_dim=8, depth=1, d_state=4, seed=0)
    ref, fused = sr.vision.build_model(name, **kw), sr.vision.build_model(name, **kw)
    fused.set_backend(*fast.scan_functions("numba"))
    calls = count_calls(monkeypatch, numba_norms, kernels)
    x = rng.standard_normal((3, 8, 8, 1))
    out, cache = fused.forward(x, return_cache=True)
    out_ref, cache_ref = ref.forward(x, return_cache=True)
    assert_close(out, out_ref, kind="backend")
    forwards = {k: n for k, n in calls.items() if "fwd" in k}
    assert all(forwards.values()), f"{name} did not run {calls}"
    dout = rng.standard_normal(out.shape)
    grads, grads_ref = fused.backward(dout, cache), ref.backward(dout, cache_ref)
    for k in forwards:
        assert calls[k.replace("fwd", "bwd")] == calls[k], calls
    for k in grads_ref:
        assert_close(grads[k], grads_ref[k], kind="backend", err_msg=k)


@pytest.mark.parametrize("threads", [1, 2])
def test_numba_norms_on_random_shapes_and_thread_counts(threads):
    """Random sizes (tokens not a multiple of the tile, more or fewer jobs than threads) on
    one and two threads: the row kernels and the fused ones against the reference, and the
    fused backward with ``dz`` given and allocated alike."""
    rng = np.random.default_rng(threads)
    with numba_threads(threads):
        for _ in range(12):
            B, D, T = (int(v) for v in rng.integers((1, 3, 1), (4, 40, 100)))
            x = (1 + 2 * rng.standard_normal((B, T, D)))  # (B, T, D) tokens
            w, b = rng.standard_normal(D), rng.standard_normal(D)
            dy = rng.standard_normal(x.shape)
            got = numba_norms.layer_norm_backward(dy, x, w, b)
            for g, r in zip(got, sr.nn.layer_norm_backward(dy, x, w, b)):
                assert_close(g, r, kind="backend")
            xz = rng.standard_normal((B, T, 2 * D))
            y_cf = np.ascontiguousarray(x.transpose(0, 2, 1))  # (B, D, T)
            want = sr.nn.layer_norm(x, w, b) * sr.nn.silu(xz[..., D:])
            assert_close(numba_norms.norm_gate_forward(y_cf, xz[..., D:], w, b), want,
                         kind="backend")
            dxz = np.zeros_like(xz)
            given = numba_norms.norm_gate_backward(dy, y_cf, xz[..., D:], w, b, dz=dxz[..., D:])
            alone = numba_norms.norm_gate_backward(dy, y_cf, xz[..., D:], w, b)
            for g, h in zip(given, alone):
                assert_close(g, h, kind="exact")
            assert_close(numba_norms.gate_forward(y_cf, xz[..., D:]),
                         plainmamba.gate_forward(y_cf, xz[..., D:]), kind="backend")
            given = numba_norms.gate_backward(dy, y_cf, xz[..., D:], dz=dxz[..., D:])
            for g, r in zip(given, plainmamba.gate_backward(dy, y_cf, xz[..., D:])):
                assert_close(g, r, kind="backend")
