"""VMamba's cross-scan and cross-merge: the reference's against plain loops and its own adjoint,
the Numba versions (``fast.numba_cross``) against the reference, and the models that run them."""
from __future__ import annotations

import numpy as np
import pytest
from cases import count_calls
from conftest import assert_close

import fast
import ssm_ref as sr
from fast import numba_cross
from ssm_ref.vision.vmamba import cross_merge, cross_scan

DTYPES = pytest.mark.parametrize("dtype", [np.float64, np.float32])


def orders(rng, kind, n_cells=12, K=4):
    """K full orders of the grid's cells, or K parts of it (EfficientVMamba's sub-grids)."""
    if kind == "full":
        return [rng.permutation(n_cells) for _ in range(K)]
    return [rng.choice(n_cells, n_cells // 2, replace=False) for _ in range(K)]


@pytest.mark.parametrize("kind", ["full", "part"])
def test_reference_cross_scan_and_merge_follow_their_definitions(rng, kind):
    """Against loops over every index, and <cross_scan(x), y> = <x, cross_merge(y)>."""
    B, D, n_cells = 2, 3, 12
    perms = orders(rng, kind, n_cells)
    K, L = len(perms), len(perms[0])
    x = rng.standard_normal((B, D, n_cells))
    ys = rng.standard_normal((B, K * D, L))
    want_scan = np.empty((B, K * D, L))
    want_merge = np.zeros((B, D, n_cells))
    for b in range(B):
        for k in range(K):
            for d in range(D):
                for t in range(L):
                    want_scan[b, k * D + d, t] = x[b, d, perms[k][t]]
                    want_merge[b, d, perms[k][t]] += ys[b, k * D + d, t]
    assert np.array_equal(cross_scan(x, perms), want_scan)
    assert_close(cross_merge(ys, perms, n_cells), want_merge, kind="exact")
    assert np.vdot(cross_scan(x, perms), ys) == pytest.approx(
        np.vdot(x, cross_merge(ys, perms, n_cells)), rel=1e-12)


@DTYPES
@pytest.mark.parametrize("kind", ["full", "part"])
def test_numba_cross_scan_and_merge_match_reference(rng, dtype, kind):
    perms = orders(rng, kind)
    x = rng.standard_normal((2, 5, 12)).astype(dtype)
    x_strided = rng.standard_normal((2, 12, 5)).astype(dtype).transpose(0, 2, 1)  # copied
    for arr in (x, x_strided):
        got = numba_cross.cross_scan(arr, perms)
        assert got.dtype == dtype and np.array_equal(got, cross_scan(arr, perms))
    ys = rng.standard_normal((2, 20, len(perms[0]))).astype(dtype)
    got = numba_cross.cross_merge(ys, perms, 12)
    assert got.dtype == dtype
    assert_close(got, cross_merge(ys.astype(np.float64), perms, 12), kind="backend", dtype=dtype)


@pytest.mark.parametrize("call, message", [
    (lambda: numba_cross.cross_scan(np.ones((2, 3)), [np.arange(3)]),
     r"Parameter x_cf has shape \(2, 3\) but should be \(B, D, H·W\)"),
    (lambda: numba_cross.cross_scan(np.ones((1, 2, 4)), [np.arange(4), np.arange(3)]),
     r"Parameter perms has orders of lengths \[3, 4\] but should have one length"),
    (lambda: numba_cross.cross_scan(np.ones((1, 2, 4)), [np.array([0, 1, 2, 4])]),
     r"Parameter perms holds cells 0 .. 4 but should hold 0 .. 3"),
    (lambda: numba_cross.cross_merge(np.ones((1, 2, 4)), [np.array([-1, 1, 2, 3])], 4),
     r"Parameter perms holds cells -1 .. 3"),
    (lambda: numba_cross.cross_merge(np.ones((1, 3, 4)), [np.arange(4)] * 2, 4),
     r"Parameter ys has shape \(1, 3, 4\) but should be \(B, K·D, L\) with K = 2"),
])
def test_numba_cross_functions_refuse_bad_input(call, message):
    with pytest.raises(ValueError, match=message):
        call()


@pytest.mark.parametrize("name", ["vmamba", "localmamba", "efficientvmamba"])
def test_ss2d_models_on_numba_run_the_numba_cross_scan(rng, name, monkeypatch):
    """One cross-scan and one cross-merge per SS2D each way, and the reference model's
    output and gradients."""
    kw = dict(img_size=(8, 8), in_chans=1, embed_dim=8, depth=1, d_state=4, seed=0)
    ref, fused = sr.vision.build_model(name, **kw), sr.vision.build_model(name, **kw)
    fused.set_backend(*fast.scan_functions("numba"))
    calls = count_calls(monkeypatch, numba_cross, ["_cross_scan", "_cross_merge"])
    x = rng.standard_normal((3, 8, 8, 1))
    out, cache = fused.forward(x, return_cache=True)
    out_ref, cache_ref = ref.forward(x, return_cache=True)
    assert calls["_cross_scan"] and calls["_cross_scan"] == calls["_cross_merge"]
    assert_close(out, out_ref, kind="backend")
    forwards = dict(calls)
    dout = rng.standard_normal(out.shape)
    grads, grads_ref = fused.backward(dout, cache), ref.backward(dout, cache_ref)
    assert calls == {k: 2 * n for k, n in forwards.items()}
    for k in grads_ref:
        assert_close(grads[k], grads_ref[k], kind="backend", err_msg=k)


def test_plainmamba_on_numba_runs_the_numba_cross_scan(rng, monkeypatch):
    """PlainMamba's four snakes: x, delta, B and C cross-scanned and y merged forward, dy
    scanned and the four gradients merged backward; the reference model's results."""
    kw = dict(img_size=(8, 8), in_chans=1, embed_dim=8, depth=1, d_state=4, seed=0)
    ref, fused = (sr.vision.build_model("plainmamba", **kw) for _ in range(2))
    fused.set_backend(*fast.scan_functions("numba"))
    calls = count_calls(monkeypatch, numba_cross, ["_cross_scan", "_cross_merge"])
    x = rng.standard_normal((3, 8, 8, 1))
    out, cache = fused.forward(x, return_cache=True)
    assert calls == {"_cross_scan": 4, "_cross_merge": 1}
    out_ref, cache_ref = ref.forward(x, return_cache=True)
    assert_close(out, out_ref, kind="backend")
    dout = rng.standard_normal(out.shape)
    grads, grads_ref = fused.backward(dout, cache), ref.backward(dout, cache_ref)
    assert calls == {"_cross_scan": 5, "_cross_merge": 5}
    for k in grads_ref:
        assert_close(grads[k], grads_ref[k], kind="backend", err_msg=k)
