"""Vim's merge of its two paths: the reference's against plain loops and its own adjoint, the
Numba versions (``fast.numba_bidirectional``) against the reference, and the Vim models that
run them."""
from __future__ import annotations

import numpy as np
import pytest
from cases import numba_against_reference, small_model
from conftest import assert_close

import ssm_ref as sr
from fast import numba_bidirectional as nb
from ssm_ref.vision.vim import merge_directions, merge_directions_backward

DTYPES = pytest.mark.parametrize("dtype", [np.float64, np.float32])
SCALES = pytest.mark.parametrize("scale", [0.5, 1.0])
KERNELS = ["_merge", "_merge_backward"]


def test_reference_merge_follows_its_definition_and_its_backward_is_its_adjoint(rng):
    """Against a loop over every index, and <merge(y_f, y_b), g> = <y_f, g_f> + <y_b, g_b>."""
    B, D, L, scale = 2, 3, 5, 0.5
    y_f, y_b, dy = (rng.standard_normal((B, D, L)) for _ in range(3))
    want = np.empty((B, D, L))
    for b in range(B):
        for d in range(D):
            for t in range(L):
                want[b, d, t] = scale * (y_f[b, d, t] + y_b[b, d, L - 1 - t])
    assert_close(merge_directions(y_f, y_b, scale), want, kind="exact")
    dy_f, dy_b = merge_directions_backward(dy, scale)
    assert np.vdot(merge_directions(y_f, y_b, scale), dy) == pytest.approx(
        np.vdot(y_f, dy_f) + np.vdot(y_b, dy_b), rel=1e-12)
    assert dy_b.flags.c_contiguous


def _inputs(rng, dtype, layout):
    """y_f, y_b, dy of shape (2, 4, 7): C-contiguous, or transposed views of (2, 7, 4)."""
    if layout == "C":
        return [rng.standard_normal((2, 4, 7)).astype(dtype) for _ in range(3)]
    return [rng.standard_normal((2, 7, 4)).astype(dtype).transpose(0, 2, 1) for _ in range(3)]


@DTYPES
@SCALES
@pytest.mark.parametrize("layout", ["C", "transposed"])
def test_numba_merge_and_its_backward_match_the_reference(rng, dtype, scale, layout):
    y_f, y_b, dy = _inputs(rng, dtype, layout)
    got = nb.merge_directions(y_f, y_b, scale)
    assert got.dtype == dtype and got.flags.c_contiguous
    assert_close(got, merge_directions(y_f, y_b, scale), kind="exact")
    got_f, got_b = nb.merge_directions_backward(dy, scale)
    want_f, want_b = merge_directions_backward(dy, scale)
    for g, w in ((got_f, want_f), (got_b, want_b)):
        assert g.dtype == dtype and g.flags.c_contiguous
        assert_close(g, w, kind="exact")


@DTYPES
def test_numba_merge_writes_into_out_even_where_out_is_an_input(rng, dtype):
    """``out=y_f`` (the mixer's dxz) in place; ``out=y_b`` reads y_b before writing over it."""
    y_f, y_b, _ = _inputs(rng, dtype, "C")
    want = merge_directions(y_f, y_b)
    for which in ("y_f", "y_b"):
        a, b = y_f.copy(), y_b.copy()
        out = a if which == "y_f" else b
        assert nb.merge_directions(a, b, out=out) is out
        assert_close(out, want, kind="exact", err_msg=which)


@pytest.mark.parametrize("call, error, message", [
    (lambda m: m.merge_directions(np.ones((2, 3)), np.ones((3, 2))), ValueError,
     r"Parameter y_b has shape \(3, 2\) but should be \(2, 3\)"),
    (lambda m: m.merge_directions(np.ones(3), np.ones((2, 3))), ValueError,
     r"Parameter y_b has shape \(2, 3\) but should be \(3,\)"),
])
def test_both_merges_refuse_arrays_of_two_shapes(call, error, message):
    """No silent broadcast: the reference and the Numba version raise the same error."""
    for module in (sr.vision.vim, nb):
        with pytest.raises(error, match=message):
            call(module)


@pytest.mark.parametrize("call, error, message", [
    (lambda: nb.merge_directions(np.ones((2, 3)), np.ones((2, 3)), out=np.ones((3, 2))),
     ValueError, r"Parameter out has shape \(3, 2\), dtype float64 and strides \(16, 8\) but "
     r"should be \(2, 3\) in float64, C-contiguous or a channel slice \(B, C, L\) of a "
     r"C-contiguous array"),
    (lambda: nb.merge_directions(np.ones((2, 3)), np.ones((2, 3)),
                                 out=np.ones((2, 3), np.float32)),
     ValueError, r"Parameter out has shape \(2, 3\), dtype float32 and strides"),
    (lambda: nb.merge_directions(np.ones((2, 3)), np.ones((2, 3)), out=np.ones((3, 2)).T),
     ValueError, r"Parameter out has shape \(2, 3\), dtype float64 and strides \(8, 16\)"),
    (lambda: nb.merge_directions(np.ones((2, 3, 4)), np.ones((2, 3, 4)),
                                 out=np.ones((2, 4, 3)).transpose(0, 2, 1)),  # not channels
     ValueError, r"Parameter out has shape \(2, 3, 4\), dtype float64 and strides \(96, 8, 24\)"),
    (lambda: nb.merge_directions(np.ones((2, 3, 4)), np.ones((2, 3, 4)),
                                 out=np.ones((2, 6, 8))[:, :3, ::2]),  # steps strided
     ValueError, r"Parameter out has shape \(2, 3, 4\), dtype float64 and strides \(384, 64, 16\)"),
    (lambda: nb.merge_directions(np.ones(3), np.ones(3, int)), TypeError,
     r"Parameter y_b has dtype int64 but float32 or float64 was expected"),
    (lambda: nb.merge_directions_backward(np.ones(3, np.float16)), TypeError,
     r"Parameter dy has dtype float16 but float32 or float64 was expected"),
    (lambda: nb.merge_directions_backward(np.float64(1.0)), ValueError,
     r"Parameter dy is a scalar but should be an array \(\.\.\., L\)"),
])
def test_numba_merge_refuses_bad_input(call, error, message):
    with pytest.raises(error, match=message):
        call()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_merge_writes_a_channel_slice_in_place(rng, dtype):
    """Vim's backward merges the x and z halves of its two paths' gradients straight into the
    halves of one (B, 2D, L) array: the Numba merge writes each channel slice in place, as
    the reference does, and leaves the other half alone."""
    y_f, y_b = (rng.standard_normal((3, 4, 5)).astype(dtype) for _ in range(2))
    for module in (sr.vision.vim, nb):
        dxz = np.full((3, 8, 5), 7.0, dtype)
        got = module.merge_directions(y_f, y_b, 0.5, out=dxz[:, 4:])
        assert np.shares_memory(got, dxz)
        assert_close(dxz[:, 4:], 0.5 * (y_f + y_b[..., ::-1]), kind="exact")
        assert np.all(dxz[:, :4] == 7.0)



@pytest.mark.parametrize("divide_out", [True, False])
def test_vim_on_numba_runs_the_numba_merge(rng, monkeypatch, divide_out):
    """One merge forward per layer; the merge's backward and the merges of dx and dz
    backward; the reference model's output and gradients (the average and the sum)."""
    def build():
        model = small_model("vim")()
        for blk in model.layers:
            blk.mixer.divide_out = divide_out
        return model
    x = rng.standard_normal((3, 8, 8, 1))
    forward, both = numba_against_reference(monkeypatch, build, nb, KERNELS, x, rng)
    assert forward == {"_merge": 1, "_merge_backward": 0}
    assert both == {"_merge": 3, "_merge_backward": 1}
